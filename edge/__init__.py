"""cryedge on-device runtime: camera frames to MQTT cry alerts.

Importable without TensorFlow. The pipeline reads in order: source, landmarks, features, window,
model, alarm, publish; ``daemon`` wires them and ``config`` describes them.
"""

__version__ = "0.1.0"
