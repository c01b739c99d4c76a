"""medvit: transfer learning with pyramid vision transformers for medical imaging."""

__version__ = "0.1.0"
