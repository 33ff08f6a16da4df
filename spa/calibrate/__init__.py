"""Calibration: where samples come from (sources: .npz files, folders, synthetic), running
them through a graph keeping per-layer statistics only (collect), and the linear layers
data criteria measure, with the im2col view of a Conv (layers)."""
