"""`StandardCocoMetric`: mmdet's CocoMetric reporting the standard 12 COCO numbers under their usual names.

mmdet's CocoMetric evaluates recall at 100/300/1000 detections (proposal-style), so the AR numbers it prints are
not the ones in papers. With maxDets (1, 10, 100), pycocotools' summary is exactly the standard 12-line table, and
the returned metrics are named `bbox_AP`, `bbox_AP_50`, ..., `bbox_AR_1`, `bbox_AR_10`, `bbox_AR_100`, ... .
"""
from __future__ import annotations

from mmdet.evaluation import CocoMetric
from mmdet.registry import METRICS

# mmdet's item name (its index into COCOeval.stats) -> the standard name with maxDets (1, 10, 100).
_STANDARD_NAMES = {
    "mAP": "AP", "mAP_50": "AP_50", "mAP_75": "AP_75", "mAP_s": "AP_s", "mAP_m": "AP_m", "mAP_l": "AP_l",
    "AR@100": "AR_1", "AR@300": "AR_10", "AR@1000": "AR_100",
    "AR_s@1000": "AR_s", "AR_m@1000": "AR_m", "AR_l@1000": "AR_l",
}


@METRICS.register_module()
class StandardCocoMetric(CocoMetric):
    def __init__(self, **kwargs) -> None:
        for key in ("proposal_nums", "metric_items"):
            if key in kwargs:
                raise ValueError(f"StandardCocoMetric fixes {key}; use mmdet's CocoMetric to choose it")
        super().__init__(proposal_nums=(1, 10, 100), metric_items=list(_STANDARD_NAMES), **kwargs)

    def compute_metrics(self, results: list) -> dict:
        renamed = {}
        for key, value in super().compute_metrics(results).items():
            iou_type, _, item = key.partition("_")
            renamed[f"{iou_type}_{_STANDARD_NAMES.get(item, item)}"] = value
        return renamed
