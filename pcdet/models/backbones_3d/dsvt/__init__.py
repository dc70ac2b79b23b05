"""DSVT: input layer (window + set partition, position embeddings, pooling indices), set-attention blocks, stage
pooling, the backbone, and the shape derivations they share. See docs/DSVT.md."""
from .blocks import DSVT_EncoderLayer, DSVTBlock, SetAttention, multihead_attention
from .dsvt import COMPAT_SCHEMA, DSVT
from .input_layer import DSVTInputLayer, PositionEmbeddingLearned
from .pooling import Stage_Reduction_Block, Stage_ReductionAtt_Block, get_pooling_index
from .shapes import DSVTShapes, ShapeConfigError, resolve_dsvt_shapes

__all__ = ['COMPAT_SCHEMA', 'DSVT', 'DSVTBlock', 'DSVTInputLayer', 'DSVTShapes', 'DSVT_EncoderLayer',
           'PositionEmbeddingLearned', 'SetAttention', 'ShapeConfigError', 'Stage_ReductionAtt_Block',
           'Stage_Reduction_Block', 'get_pooling_index', 'multihead_attention', 'resolve_dsvt_shapes']
