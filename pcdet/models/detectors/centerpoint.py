"""CenterPoint: a single-stage detector that runs its modules in order and reads boxes from the dense head.

batch_dict contract: reads what its modules read (typically `points (N, 1+C)`, `batch_size`, `gt_boxes (B, M, 8|10)`
in training and, when present, at eval for recall); the dense head writes `final_box_dicts` at eval.

`forward(batch_dict)`:
    training -> `({'loss': 0-d tensor}, tb_dict {'loss_rpn', <head terms>}, disp_dict {})`
    eval     -> `(pred_dicts, recall_dict)`: `pred_dicts = batch_dict['final_box_dicts']` (list (B) of
                `pred_boxes (K, 7|9)`, `pred_scores (K,)`, `pred_labels (K,)` 1-based) and recall counters
                `{'gt', 'roi_<t>', 'rcnn_<t>'}` for `POST_PROCESSING.RECALL_THRESH_LIST` (3D IoU).
"""
from .detector3d_template import POST_PROCESSING_SCHEMA, Detector3DTemplate


class CenterPoint(Detector3DTemplate):
    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        self.module_list = self.build_networks()

    def forward(self, batch_dict):
        for cur_module in self.module_list:
            batch_dict = cur_module(batch_dict)

        if self.training:
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {'loss': loss}, tb_dict, disp_dict
        return self.post_processing(batch_dict)

    def get_training_loss(self):
        disp_dict = {}
        loss_rpn, tb_dict = self.dense_head.get_loss()
        tb_dict = {'loss_rpn': loss_rpn.item(), **tb_dict}
        return loss_rpn, tb_dict, disp_dict

    def post_processing(self, batch_dict):
        """Boxes come from `batch_dict['final_box_dicts']`; only recall is computed here."""
        post_process_cfg = self.CONFIG_SCHEMA.get(self.model_cfg, 'POST_PROCESSING')
        final_pred_dict = batch_dict['final_box_dicts']
        recall_dict = {}
        for index in range(batch_dict['batch_size']):
            recall_dict = self.generate_recall_record(
                box_preds=final_pred_dict[index]['pred_boxes'], recall_dict=recall_dict, batch_index=index,
                data_dict=batch_dict,
                thresh_list=POST_PROCESSING_SCHEMA.get(post_process_cfg, 'RECALL_THRESH_LIST'))
        return final_pred_dict, recall_dict
