"""Short labels for the report's configurations: the model, then only the settings that tell them apart
("od_resnet18 K=4", "od_resnet18 K=1 norm=batch"), so a chart's axis and legend stay readable."""
from __future__ import annotations

import json

from train import dashboard
from train.config import MODEL_KWARGS, ZOO_KWARGS, model_family

# Short names of the settings labels show; any other key is shown by its dotted name ("model." dropped).
SHORT = {"model.kernel_num": "K", "model.reduction": "r", "model.attention_norm": "norm", "model.attentions": "att",
         "model.spatial_act": "spatial", "model.dynamic_stages": "stages", "model.num_experts": "experts",
         "model.temperature_init": "T0", "model.temperature_epochs": "T_epochs", "model.min_channel": "min_ch",
         "data.name": "data", "data.img_size": "size", "data.global_batch_size": "batch", "trainer.epochs": "epochs"}


def _applies(key: str, config: dict[str, object]) -> bool:
    """Whether a setting means something for the configuration's model: a zoo argument only for the families that
    take it (kernel_num is no setting of a static model), the temperature only where the attention has one."""
    name = str(config.get("model.name", ""))
    if key.startswith("model.temperature_"):
        return name.startswith(dashboard.TEMPERATURE_FAMILIES)
    if key.startswith("model.") and key[len("model."):] in ZOO_KWARGS:
        return key[len("model."):] in MODEL_KWARGS.get(model_family(name), ())
    return True


def _word(key: str, value) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list) else json.dumps(value).strip('"').replace(" ", "")
    return f"{SHORT.get(key, key[len('model.'):] if key.startswith('model.') else key)}={text}"


def describe(configs: list[dict[str, object]]) -> list[str]:
    """Short labels: the model, then only the settings that tell the configurations apart. A model setting counts
    when it differs between configurations of the same model (between models the name already differs), any other
    setting when it differs at all; settings that mean nothing for a model (its kernel_num when static, the
    temperature of a model without one) and unset ones (the builder's default) are left out."""
    def differs(key: str, among: list[dict]) -> bool:
        return len({json.dumps(c.get(key), sort_keys=True) for c in among if _applies(key, c)}) > 1

    order = list(SHORT)  # model settings first, the best known first (K, r, norm, ...), then the rest by name
    keys = sorted({k for c in configs for k in c} - {"model.name"},
                  key=lambda k: (not k.startswith("model."), order.index(k) if k in order else len(order), k))
    by_model: dict[str, list[dict]] = {}
    for c in configs:
        by_model.setdefault(str(c.get("model.name")), []).append(c)
    labels = []
    for c in configs:
        shown = [k for k in keys if c.get(k) is not None and _applies(k, c)
                 and differs(k, by_model[str(c.get("model.name"))] if k.startswith("model.") else configs)]
        labels.append(" ".join([str(c.get("model.name", "run")), *(_word(k, c[k]) for k in shown)]))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # configurations that differ only where it means nothing
        seen[label] = seen.get(label, 0) + 1
        labels[i] = label if seen[label] == 1 else f"{label} #{seen[label]}"
    return labels
