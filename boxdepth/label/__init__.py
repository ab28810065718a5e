"""`boxdepth label` (model masks for the boxes of a COCO json) and `boxdepth qa` (rank the labels most likely wrong)."""
