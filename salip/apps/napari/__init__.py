"""salip in napari (``pip install "salip[napari]"``): a reader for what salip reads, and a
dock widget that runs salip, shows its labels, boxes and confidence over the scan, takes
hints drawn on a slice, and saves salip's outputs. Declared in ``napari.yaml`` (npe2)."""
