"""Export Kensa's model for deployment: one fixed-size graph, ONNX or OpenVINO, checked.

``core`` is the scoring pipeline as an ``nn.Module`` (bank as a buffer), ``formats`` writes
and runs the files, ``parity`` refuses a file whose normalized scores leave the app's.
Import the submodules directly: ``formats`` loads OpenVINO only when it is used.
"""
