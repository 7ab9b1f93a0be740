"""trtalk: real-time talking-face engine built on the PC-AVS networks."""

__version__ = "0.1.0"
