//! Births and deaths of the edge node: NBIRTH (bdSeq, `Node Control/Rebirth`, the node
//! metrics) and every DBIRTH from the committed current values, NDATA with the outbox gauges,
//! DDEATH and NDEATH. See the parent module for the rules.

use std::sync::atomic::Ordering;

use super::{now_ms, with_reader, Session, SessionError, Tag};
use crate::sparkplug::codec::{self, Out, QUALITY_BAD, REBIRTH};
use crate::sparkplug::model::{Reading, NODE_METRICS};
use crate::sparkplug::proto::DataType;

impl Session<'_> {
    /// NBIRTH and every DBIRTH, from the committed current values (module doc).
    pub(super) async fn birth(&mut self) -> Result<(), SessionError> {
        let snap = with_reader(self.reader, |r| r.birth()).await?;
        let (depth, oldest) = with_reader(self.reader, |r| r.depth()).await?;
        let now = now_ms();
        self.seq = 0;
        let mut metrics = vec![
            codec::bd_seq_metric(self.bd_seq, now),
            codec::metric(&Out {
                name: Some(REBIRTH),
                alias: None,
                datatype: DataType::Boolean,
                with_datatype: true,
                value: &serde_json::json!(false),
                quality: None,
                timestamp_ms: now,
                historical: false,
            }),
        ];
        for (i, v) in self.node_values(depth, oldest).iter().enumerate() {
            let (name, datatype, alias) = NODE_METRICS[i];
            metrics.push(codec::metric(&Out {
                name: Some(name),
                alias: Some(alias),
                datatype,
                with_datatype: true,
                value: v,
                quality: None,
                timestamp_ms: now,
                historical: false,
            }));
        }
        self.last_node = Some((depth, oldest));
        let payload = self.payload(metrics);
        self.publish(self.topics.node("NBIRTH"), Tag::Plain, payload)?;
        let missing = Reading {
            v: serde_json::Value::Null,
            q: None,
        };
        for dev in &self.settings.catalogue.devices {
            let values = snap.values.get(&dev.code);
            let metrics = dev
                .metrics
                .iter()
                .map(|def| {
                    let r = values
                        .and_then(|v| v.metrics.get(&def.name))
                        .unwrap_or(&missing);
                    // A signal never read yet is bad until its first poll says otherwise.
                    let quality = match r.q {
                        None if def.name.starts_with("Signals/") => Some(QUALITY_BAD),
                        q => q,
                    };
                    codec::metric(&Out {
                        name: Some(&def.name),
                        alias: Some(def.alias),
                        datatype: def.datatype,
                        with_datatype: true,
                        value: &r.v,
                        quality,
                        timestamp_ms: now,
                        historical: false,
                    })
                })
                .collect();
            let seq = self.next_seq() as u8;
            let payload = codec::payload(now, Some(seq), metrics);
            self.publish(self.topics.device("DBIRTH", &dev.code), Tag::Plain, payload)?;
        }
        self.historical_through = snap.through;
        // Rows fetched but not sent are read again: they may now be historical.
        self.page.clear();
        self.dirty = true;
        self.born = true;
        self.stats.sparkplug.births.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            bd_seq = self.bd_seq,
            devices = self.settings.catalogue.devices.len(),
            historical_through = snap.through,
            "sparkplug: NBIRTH and DBIRTHs published"
        );
        Ok(())
    }

    pub(super) fn node_values(&self, depth: u64, oldest: Option<i64>) -> [serde_json::Value; 3] {
        let age = oldest.map(|t| ((now_ms() - t).max(0)) as f64 / 1000.0);
        [
            serde_json::json!(self.settings.version),
            serde_json::json!(depth),
            age.map_or(serde_json::Value::Null, |a| serde_json::json!(a)),
        ]
    }

    /// NDATA with the outbox gauges when they changed.
    pub(super) async fn node_data(&mut self) -> Result<(), SessionError> {
        let (depth, oldest) = with_reader(self.reader, |r| r.depth()).await?;
        if self.last_node == Some((depth, oldest)) {
            return Ok(());
        }
        self.last_node = Some((depth, oldest));
        let now = now_ms();
        let values = self.node_values(depth, oldest);
        let metrics = (1..3)
            .map(|i| {
                let (_, datatype, alias) = NODE_METRICS[i];
                codec::metric(&Out {
                    name: None,
                    alias: Some(alias),
                    datatype,
                    with_datatype: false,
                    value: &values[i],
                    quality: None,
                    timestamp_ms: now,
                    historical: false,
                })
            })
            .collect();
        let payload = self.payload(metrics);
        self.publish(self.topics.node("NDATA"), Tag::Plain, payload)
    }

    /// DDEATH for `retired`, then NDEATH (QoS 1, this session's `bdSeq`).
    pub(super) fn death(&mut self, retired: &[String]) {
        for code in retired {
            if self.born && self.settings.catalogue.device(code).is_some() {
                let payload = self.payload(Vec::new());
                let _ = self.publish(self.topics.device("DDEATH", code), Tag::Plain, payload);
            }
        }
        let payload = codec::ndeath(self.bd_seq, now_ms());
        let _ = self.publish(self.topics.node("NDEATH"), Tag::Other, payload);
        self.born = false;
    }
}
