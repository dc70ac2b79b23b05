"""Target assigners of the dense heads (`center_targets`: CenterHead heatmaps and regression targets)."""
