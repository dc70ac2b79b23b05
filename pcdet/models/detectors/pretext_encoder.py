"""What the pretexts that train a plain DSVT encoder for the fine-tune configs share (ContrastivePretrain,
GaussianRenderPretrain): the model-config keys of that encoder and the check that it is there and is `DSVT`, so the
state-dict keys `vfe.*` / `backbone_3d.*` are those of every DSVT fine-tune config and `--pretrained_model` loads
the whole encoder."""
from ...config import ConfigError
from ...config_schema import REQUIRED, Select
from ...utils.checkpoint import PRETRAINED_ENCODER_SCHEMA
from .detector3d_template import slot_schema

PRETEXT_ENCODER_KEYS = {
    'NAME': REQUIRED,
    'VFE': Select(slot_schema('vfe'), required=True),
    'BACKBONE_3D': Select(slot_schema('backbone_3d'), required=True),
    'PRETRAINED_ENCODER': PRETRAINED_ENCODER_SCHEMA,
}


def check_plain_dsvt_encoder(model_cfg, schema, model_name, why):
    """ConfigError unless MODEL.VFE and MODEL.BACKBONE_3D are given and the backbone is `DSVT`; `why` ends the
    message (what the model needs the plain encoder for)."""
    for key in ('VFE', 'BACKBONE_3D'):
        if schema.get(model_cfg, key) is None:
            raise ConfigError(f'MODEL.{key} is required for {model_name}')
    if model_cfg.BACKBONE_3D.NAME != 'DSVT':
        raise ConfigError(f'MODEL.BACKBONE_3D.NAME: {model_name} needs the plain DSVT encoder ({why}); got '
                          f'{model_cfg.BACKBONE_3D.NAME!r}')
