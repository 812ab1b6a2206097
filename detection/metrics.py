"""`StandardCocoMetric`: mmdet's CocoMetric reporting the standard 12 COCO numbers under their usual names, and
AP 0 (with a warning) instead of nothing when the detector outputs no box on the whole test set.

mmdet's CocoMetric evaluates recall at 100/300/1000 detections (proposal-style), so the AR numbers it prints are
not the ones in papers. With maxDets (1, 10, 100), pycocotools' summary is exactly the standard 12-line table, and
the returned metrics are named `bbox_AP`, `bbox_AP_50`, ..., `bbox_AR_1`, `bbox_AR_10`, `bbox_AR_100`, ... .
"""
from __future__ import annotations

from mmdet.datasets.api_wrappers import COCO, COCOeval
from mmdet.evaluation import CocoMetric
from mmdet.registry import METRICS
from mmengine.logging import MMLogger

# mmdet's item name (its index into COCOeval.stats) -> the standard name with maxDets (1, 10, 100).
_STANDARD_NAMES = {
    "mAP": "AP", "mAP_50": "AP_50", "mAP_75": "AP_75", "mAP_s": "AP_s", "mAP_m": "AP_m", "mAP_l": "AP_l",
    "AR@100": "AR_1", "AR@300": "AR_10", "AR@1000": "AR_100",
    "AR_s@1000": "AR_s", "AR_m@1000": "AR_m", "AR_l@1000": "AR_l",
}
NO_DETECTIONS = ("the detector output no boxes on any of the {n} test images, so AP and AR are 0 "
                 "(untrained or diverged weights, or a score threshold (test_cfg.rcnn.score_thr) above every score)")


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
        # mmdet logs an error and returns no AP at all when the whole result set is empty (pycocotools cannot load
        # an empty result list); an empty detection set is a valid one to score, and it scores 0.
        empty = [m for m in self.metrics if m in ("bbox", "segm") and f"{m}_AP" not in renamed]
        if empty and not self.format_only:
            for iou_type in empty:
                renamed.update(self._score_no_detections(iou_type))
            renamed["warning"] = NO_DETECTIONS.format(n=len(results))
            MMLogger.get_current_instance().warning(renamed["warning"])
        return renamed

    def _score_no_detections(self, iou_type: str) -> dict:
        """pycocotools' 12 numbers for an empty detection set: 0, or -1 where an area range has no ground truth."""
        gt = self._coco_api
        detections = COCO()
        detections.dataset = dict(images=list(gt.dataset["images"]), categories=list(gt.dataset["categories"]),
                                  annotations=[])
        detections.createIndex()
        evaluation = COCOeval(gt, detections, iou_type)
        evaluation.params.catIds = self.cat_ids
        evaluation.params.imgIds = self.img_ids
        evaluation.params.maxDets = list(self.proposal_nums)
        evaluation.params.iouThrs = self.iou_thrs
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        names = _STANDARD_NAMES.values()  # in the order of COCOeval.stats
        return {f"{iou_type}_{name}": float(f"{evaluation.stats[i]:.3f}") for i, name in enumerate(names)}
