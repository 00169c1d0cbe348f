"""Datasets (VOC, folder, the embedded synthetic set), transforms and the LightningDataModule."""
