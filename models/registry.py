"""The single explicit list of models seqprof profiles."""
from models import convrec_lightweight, sasrec
from models.base import ModelSpec

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="sasrec",
            family="attention",
            paper="Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018",
            code="pmixer/SASRec.pytorch",
            config_cls=sasrec.SASRecConfig,
            model_cls=sasrec.SASRec,
            make_batch=sasrec.make_batch,
            default_profile="beauty",
            causal=True,
        ),
        ModelSpec(
            name="convrec-light",
            family="convolution",
            paper="Tanjim, ConvRec: a simple lightweight convolutional network for next item recommendation",
            code="(no public code; fairseq LightweightConv1d)",
            config_cls=convrec_lightweight.LightweightConvRecConfig,
            model_cls=convrec_lightweight.LightweightConvRec,
            make_batch=convrec_lightweight.make_batch,
            default_profile="beauty",
            causal=True,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; choose from {sorted(REGISTRY)}") from None
