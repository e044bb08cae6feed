"""WitMotion tilt sensors on a UART: 11-byte frames starting 0x55 (WT901, HWT, SINDT families).

:mod:`drivers.witmotion.codec` is the sans-IO codec; :mod:`drivers.witmotion.driver` reads a
port and turns angle frames into readings. The RS-485 Modbus variant (WT901C485) needs no code:
it is the ``witmotion-wt901c485`` model file on a Modbus bus.
"""
