"""Clinical reporting of a run: calibration (temperature, conformal sets, operating points fitted on
validation), the report sections built from them, their plots, and evaluation on external data.

``medvit.clinical.calibrate`` needs no torch unless validation predictions must be computed.
"""
