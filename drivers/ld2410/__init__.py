"""HLK-LD2410 (B/C) mmWave presence radar on a UART (256000 baud 8N1 by default).

:mod:`drivers.ld2410.codec` is the sans-IO codec for its data and command frames;
:mod:`drivers.ld2410.driver` configures the radar at start-up and turns its 10-20 frames per
second into occupancy readings without flooding the gateway.
"""
