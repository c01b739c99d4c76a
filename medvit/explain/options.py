"""Names and defaults of the explanation options, importable without torch (the CLI's ``--help`` uses them)."""

CAM_METHOD_NAMES = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")
"""The CAM methods by name, in menu order (:data:`medvit.explain.cam.CAM_METHODS` maps them to classes)."""

DEFAULT_TOP_FRACTION = 0.2
"""Share of CAM pixels kept for the IoU: the upper end of the 15-20 % range (a BUSI lesion often
covers more than 15 % of the image); every table records the value it used."""

DEFAULT_ROAD_PERCENTILES = (20, 50, 80)
"""ROAD percentiles of the fast default (pytorch-grad-cam's ``ROADCombined`` uses 10, 20, ..., 90): three
sparse solves per stage and direction instead of nine."""

DEFAULT_CURVE_STEPS = 10
"""Points of the deletion/insertion curves beyond 0 (shares 0, 0.1, ..., 1)."""
