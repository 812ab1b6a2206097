# Registers the zoo's backbones (OD_ResNet, StaticResNet, OD_MobileNetV2, StaticMobileNetV2) and
# StandardCocoMetric with mmdet; run from the repository root so that `detection` imports.
custom_imports = dict(imports=['detection.plugins'], allow_failed_imports=False)
