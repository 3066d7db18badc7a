"""`kubectl lpm`: the kubectl plugin for LPM."""
