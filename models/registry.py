"""The single explicit list of models seqprof profiles."""
from models import bert4rec, carca, caser, caser_plus, convrec_hierarchical, convrec_lightweight, cosrec, proxyrca, sasrec
from models.base import ModelSpec

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="sasrec",
            family="attention",
            paper="Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018",
            code="pmixer/SASRec.pytorch@756f742 (model.py, main.py)",
            config_cls=sasrec.SASRecConfig,
            model_cls=sasrec.SASRec,
            make_batch=sasrec.make_batch,
            default_profile="beauty",
            causal=True,
            presets=sasrec.PRESETS,
        ),
        ModelSpec(
            name="bert4rec",
            family="attention",
            paper="Sun et al., BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from Transformer, CIKM 2019",
            code="FeiSun/BERT4Rec",
            config_cls=bert4rec.BERT4RecConfig,
            model_cls=bert4rec.BERT4Rec,
            make_batch=bert4rec.make_batch,
            default_profile="beauty",
            causal=False,
            presets=bert4rec.PRESETS,
        ),
        ModelSpec(
            name="carca",
            family="attention",
            paper="Rashed et al., CARCA: Context and Attribute-Aware Next-Item Recommendation via Cross-Attention, RecSys 2022",
            code="ahmedrashed-ml/CARCA",
            config_cls=carca.CARCAConfig,
            model_cls=carca.CARCA,
            make_batch=carca.make_batch,
            default_profile="beauty",
            causal=False,
            needs_item_features=True,
            presets=carca.PRESETS,
        ),
        ModelSpec(
            name="proxyrca",
            family="attention",
            paper="Seol et al., Proxy-based Item Representation for Attribute and Context-aware Recommendation, WSDM 2024",
            code="theeluwin/ProxyRCA",
            config_cls=proxyrca.ProxyRCAConfig,
            model_cls=proxyrca.ProxyRCA,
            make_batch=proxyrca.make_batch,
            default_profile="beauty",
            causal=False,
            needs_item_features=True,
        ),
        ModelSpec(
            name="convrec-hier",
            family="convolution",
            paper="Rethinking Convolutional Networks for Attribute-Aware Sequential Recommendation (ConvRec, hierarchical down-scaling)",
            code="ismll-research/ConvRec",
            config_cls=convrec_hierarchical.HierarchicalConvRecConfig,
            model_cls=convrec_hierarchical.HierarchicalConvRec,
            make_batch=convrec_hierarchical.make_batch,
            default_profile="beauty",
            causal=False,
            needs_item_features=True,
            presets=convrec_hierarchical.PRESETS,
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
            presets=convrec_lightweight.PRESETS,
        ),
        ModelSpec(
            name="cosrec",
            family="convolution",
            paper="Yan et al., CosRec: 2D Convolutional Neural Networks for Sequential Recommendation, CIKM 2019",
            code="zzxslp/CosRec",
            config_cls=cosrec.CosRecConfig,
            model_cls=cosrec.CosRec,
            make_batch=cosrec.make_batch,
            default_profile="ml-1m",
            causal=False,
            min_len=5,  # two unpadded 3x3 convolutions shrink the L x L grid by 4
        ),
        ModelSpec(
            name="cosrec-plus",
            family="convolution",
            paper="Siciliano et al., Caser+ and CosRec+: Closing the Gap Between CNNs and Attention Models in SRS, IIR 2025",
            code="antoniopurificato/recsys_conv_conf (new_models/CosRec.py, CosRec2)",
            config_cls=cosrec.CosRecPlusConfig,
            model_cls=cosrec.CosRecPlus,
            make_batch=cosrec.make_plus_batch,
            default_profile="ml-1m",
            causal=True,
        ),
        ModelSpec(
            name="caser",
            family="convolution",
            paper="Tang & Wang, Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding, WSDM 2018",
            code="graytowne/caser_pytorch",
            config_cls=caser.CaserConfig,
            model_cls=caser.Caser,
            make_batch=caser.make_batch,
            default_profile="ml-1m",
            causal=False,
        ),
        ModelSpec(
            name="caser-plus",
            family="convolution",
            paper="Siciliano et al., Caser+ and CosRec+: Closing the Gap Between CNNs and Attention Models in SRS, IIR 2025",
            code="antoniopurificato/recsys_conv_conf (new_models/Caser.py, Caser2)",
            config_cls=caser_plus.CaserPlusConfig,
            model_cls=caser_plus.CaserPlus,
            make_batch=caser_plus.make_batch,
            default_profile="ml-1m",
            causal=True,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; choose from {sorted(REGISTRY)}") from None
