//! TEMPORARY stand-in for txnlog's marker API (`kafka::owner::TxnMarker`,
//! `Shard::write_txn_markers`) until that branch is merged: writes nothing.

use std::rc::Rc;

use crate::broker::Shard;

pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

impl Shard {
    pub async fn write_txn_markers(
        self: &Rc<Self>,
        marker: TxnMarker,
        parts: Vec<(String, i32)>,
    ) -> Vec<i16> {
        let _ = (
            marker.producer_id,
            marker.producer_epoch,
            marker.commit,
            marker.coordinator_epoch,
        );
        vec![0; parts.len()]
    }
}
