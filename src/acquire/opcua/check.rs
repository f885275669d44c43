//! The check of a configured node on connect (SPEC §9): its DataType must be the declared
//! `type` and its ValueRank must admit the declared shape (`count = 1` a scalar, `count > 1`
//! a one-dimensional array).
//!
//! Owns: the verdict on one node from its DataType and ValueRank answers, and the standard
//! DataType node of each declared type. Never converts: a contradiction is reported (the signal
//! is published `null`/`bad`), never read as something else.
//!
//! ## Rules the tests defend
//!
//! - DataType other than the declared type's standard node → [`Verdict::Mismatch`].
//! - A scalar signal on a node whose ValueRank is ≥ 0 (an array: one or more dimensions, or a
//!   fixed number) → mismatch; an array signal on a ValueRank −1 (scalar) or ≥ 2
//!   (multi-dimensional) node → mismatch. ValueRank −2 (any) and −3 (scalar or one dimension)
//!   admit both, and so does an unreadable ValueRank: the Read's own check of each value
//!   (type and length) still applies.
//! - A node the server refuses (Bad status on DataType) or that has no DataType →
//!   [`Verdict::Exception`].

use opcua::types::{DataValue, NodeId, Variant};

use crate::config::{DataType, Signal};

/// What the connect-time check says of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Readable,
    /// The server's node contradicts the config (counted in `type_mismatches`).
    Mismatch(String),
    /// The server has no such readable node (counted in `exceptions`).
    Exception(String),
}

/// The verdict on `signal`'s node from the answers to its DataType and ValueRank reads.
pub(super) fn judge(signal: &Signal, data_type: &DataValue, value_rank: &DataValue) -> Verdict {
    let status = data_type.status();
    if status.is_bad() {
        return Verdict::Exception(format!("the server refused the node: {status}"));
    }
    let dt = match &data_type.value {
        Some(Variant::NodeId(dt)) => dt,
        other => return Verdict::Exception(format!("the server gave no DataType ({other:?})")),
    };
    if **dt != ua_data_type(signal.data_type) {
        return Verdict::Mismatch(format!(
            "declared type {} but the server's DataType is {}",
            signal.data_type.as_str(),
            data_type_name(dt)
        ));
    }
    let rank = match (&value_rank.value, value_rank.status().is_good()) {
        (Some(Variant::Int32(r)), true) => *r,
        _ => return Verdict::Readable,
    };
    let array = signal.count > 1;
    if !array && rank >= 0 {
        return Verdict::Mismatch(format!(
            "declared a scalar (no count) but the server's node is an array (ValueRank {rank})"
        ));
    }
    if array && (rank == -1 || rank >= 2) {
        let what = if rank == -1 {
            "a scalar (ValueRank -1)".to_string()
        } else {
            format!("an array of {rank} dimensions (ValueRank {rank})")
        };
        return Verdict::Mismatch(format!(
            "declared an array (count = {}) but the server's node is {what}",
            signal.count
        ));
    }
    Verdict::Readable
}

/// The standard DataType node of a declared type (namespace 0).
pub(super) fn ua_data_type(t: DataType) -> NodeId {
    let id: u32 = match t {
        DataType::Bool => 1,
        DataType::I8 => 2,
        DataType::U8 => 3,
        DataType::I16 => 4,
        DataType::U16 => 5,
        DataType::I32 => 6,
        DataType::U32 => 7,
        DataType::I64 => 8,
        DataType::U64 => 9,
        DataType::F32 => 10,
        DataType::F64 => 11,
    };
    NodeId::new(0, id)
}

/// A DataType node for messages: the standard name where it has one.
fn data_type_name(dt: &NodeId) -> String {
    const NAMES: [&str; 11] = [
        "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
        "Float", "Double",
    ];
    if dt.namespace == 0 {
        if let opcua::types::Identifier::Numeric(n) = dt.identifier {
            if (1..=11).contains(&n) {
                return NAMES[(n - 1) as usize].to_string();
            }
        }
    }
    dt.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignalSource;
    use opcua::types::StatusCode;

    fn signal(data_type: DataType, count: u16) -> Signal {
        Signal {
            source: SignalSource::Node {
                node: "ns=2;i=1".into(),
            },
            data_type,
            count,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn answer(v: Variant) -> DataValue {
        DataValue {
            value: Some(v),
            status: Some(StatusCode::Good),
            ..Default::default()
        }
    }

    fn dt(t: DataType) -> DataValue {
        answer(Variant::NodeId(Box::new(ua_data_type(t))))
    }

    fn rank(r: i32) -> DataValue {
        answer(Variant::Int32(r))
    }

    #[test]
    fn declared_types_name_the_standard_data_type_nodes() {
        assert_eq!(ua_data_type(DataType::Bool), NodeId::new(0, 1u32));
        assert_eq!(ua_data_type(DataType::F64), NodeId::new(0, 11u32));
        assert_eq!(data_type_name(&NodeId::new(0, 7u32)), "UInt32");
        assert_eq!(data_type_name(&NodeId::new(2, 7u32)), "ns=2;i=7");
    }

    #[test]
    fn a_contradicting_data_type_is_a_mismatch() {
        let v = judge(&signal(DataType::F64, 1), &dt(DataType::F32), &rank(-1));
        assert_eq!(
            v,
            Verdict::Mismatch("declared type f64 but the server's DataType is Float".into())
        );
    }

    #[test]
    fn scalars_need_a_scalar_node_and_arrays_a_one_dimensional_one() {
        let scalar = signal(DataType::I32, 1);
        let array = signal(DataType::I32, 3);
        let i32_dt = dt(DataType::I32);
        for r in [-1, -2, -3] {
            assert_eq!(judge(&scalar, &i32_dt, &rank(r)), Verdict::Readable, "{r}");
        }
        for r in [0, 1, 2] {
            assert!(
                matches!(judge(&scalar, &i32_dt, &rank(r)), Verdict::Mismatch(m) if m.contains("is an array")),
                "{r}"
            );
        }
        for r in [0, 1, -2, -3] {
            assert_eq!(judge(&array, &i32_dt, &rank(r)), Verdict::Readable, "{r}");
        }
        assert!(
            matches!(judge(&array, &i32_dt, &rank(-1)), Verdict::Mismatch(m) if m.contains("is a scalar"))
        );
        assert!(
            matches!(judge(&array, &i32_dt, &rank(2)), Verdict::Mismatch(m) if m.contains("2 dimensions"))
        );
    }

    #[test]
    fn an_unreadable_value_rank_leaves_the_value_check_to_the_read() {
        let bad = DataValue {
            value: None,
            status: Some(StatusCode::BadAttributeIdInvalid),
            ..Default::default()
        };
        assert_eq!(
            judge(&signal(DataType::U16, 1), &dt(DataType::U16), &bad),
            Verdict::Readable
        );
    }

    #[test]
    fn a_refused_node_is_an_exception() {
        let refused = DataValue {
            value: None,
            status: Some(StatusCode::BadNodeIdUnknown),
            ..Default::default()
        };
        assert!(matches!(
            judge(&signal(DataType::U16, 1), &refused, &refused),
            Verdict::Exception(_)
        ));
    }
}
