"""`cortex top`: the live fleet dashboard (Textual). Data in `data.py`, widgets apart, styles in top.tcss."""
