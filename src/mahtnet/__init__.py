"""MAHT-Net: cephalometric landmark detection pipeline."""

__version__ = "0.1.0"
