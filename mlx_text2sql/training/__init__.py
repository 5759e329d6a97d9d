"""Training: the settings table (:mod:`.settings`).

Pure Python here: importing the package imports no MLX.
"""
