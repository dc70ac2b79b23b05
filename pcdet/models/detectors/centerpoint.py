"""CenterPoint: a single-stage detector that runs its modules in order and reads boxes from the dense head.

batch_dict contract: reads what its modules read (typically `points (N, 1+C)`, `batch_size`, `gt_boxes (B, M, 8|10)`
in training and, when present, at eval for recall); the dense head writes `final_box_dicts` at eval.

`forward(batch_dict)`:
    training -> `({'loss': 0-d tensor}, tb_dict {'loss_rpn', <head terms>}, disp_dict {})`
    eval     -> `(pred_dicts, recall_dict)`: `pred_dicts = batch_dict['final_box_dicts']` (list (B) of
                `pred_boxes (K, 7|9)`, `pred_scores (K,)`, `pred_labels (K,)` 1-based) and recall counters
                `{'gt', 'roi_<t>', 'rcnn_<t>'}` for `POST_PROCESSING.RECALL_THRESH_LIST` (3D IoU; see
                `generate_recall_record`).
"""
import torch

from .detector3d_template import POST_PROCESSING_SCHEMA, Detector3DTemplate


def generate_recall_record(box_preds, recall_dict, batch_index, data_dict=None, thresh_list=None):
    """Accumulate OpenPCDet's recall counters for sample `batch_index`.

    Strips trailing all-zero GT rows, computes `boxes_iou3d_gpu(box_preds, gt)` and counts, per threshold t in
    `thresh_list`, the GT boxes whose best IoU is `> t`: `recall_dict {'gt', 'roi_<t>', 'rcnn_<t>'}` (ints).
    `roi_<t>` (recall of a second stage's proposals upstream) stays 0: pcdet has no RoI stage, the key is kept for
    the evaluation log's format. No-op without `gt_boxes`.
    """
    if 'gt_boxes' not in data_dict:
        return recall_dict
    from ...ops.iou3d_nms import iou3d_nms_utils

    if len(recall_dict) == 0:
        recall_dict = {'gt': 0}
        for cur_thresh in thresh_list:
            recall_dict['roi_%s' % str(cur_thresh)] = 0
            recall_dict['rcnn_%s' % str(cur_thresh)] = 0

    cur_gt = data_dict['gt_boxes'][batch_index]
    k = cur_gt.__len__() - 1
    while k >= 0 and cur_gt[k].sum() == 0:
        k -= 1
    cur_gt = cur_gt[:k + 1]

    if cur_gt.shape[0] > 0:
        if box_preds.shape[0] > 0:
            iou3d_rcnn = iou3d_nms_utils.boxes_iou3d_gpu(box_preds[:, 0:7], cur_gt[:, 0:7])
        else:
            iou3d_rcnn = torch.zeros((0, cur_gt.shape[0]))
        for cur_thresh in thresh_list:
            if iou3d_rcnn.shape[0] > 0:
                recall_dict['rcnn_%s' % str(cur_thresh)] += (iou3d_rcnn.max(dim=0)[0] > cur_thresh).sum().item()
        recall_dict['gt'] += cur_gt.shape[0]
    return recall_dict


class CenterPoint(Detector3DTemplate):
    generate_recall_record = staticmethod(generate_recall_record)

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
            recall_dict = generate_recall_record(
                box_preds=final_pred_dict[index]['pred_boxes'], recall_dict=recall_dict, batch_index=index,
                data_dict=batch_dict,
                thresh_list=POST_PROCESSING_SCHEMA.get(post_process_cfg, 'RECALL_THRESH_LIST'))
        return final_pred_dict, recall_dict
