//! Registers → typed values, and back.
//!
//! This is the representation layer of Modbus acquisition: raw 16-bit words and coil bits come
//! in, typed engineering [`Value`]s go out, so nothing downstream ever sees a register slice.
//! Everything here is pure (no I/O, no clock) and total: a short slice or a value that is not
//! a finite number is a [`DecodeError`], never a panic.
//!
//! ## Byte orders (SPEC §2, §6)
//!
//! Orders are named after how `1.0f32 = 0x3F80_0000` (bytes `A B C D`, `A` most significant)
//! arrives on the wire:
//!
//! | order  | f32 1.0 registers | 64-bit (bytes A..H) | 16-bit |
//! |--------|-------------------|---------------------|--------|
//! | `ABCD` | `3F80 0000`       | `AB CD EF GH`       | as is  |
//! | `CDAB` | `0000 3F80`       | `GH EF CD AB`       | as is  |
//! | `BADC` | `803F 0000`       | `BA DC FE HG`       | bytes swapped |
//! | `DCBA` | `0000 803F`       | `HG FE DC BA`       | bytes swapped |
//!
//! Every order is the composition of two independent involutions: *reverse the register
//! order* (`CDAB`, `DCBA`) and *swap the two bytes of each register* (`BADC`, `DCBA`). Decoding
//! undoes them into the canonical big-endian integer; [`encode`] applies them again. For a
//! one-register value reversal is a no-op, which gives the 16-bit rule of SPEC §6 for free.
//!
//! ## Engineering values
//!
//! Engineering value = raw × `scale` + `offset`. With `scale == 1` and `offset == 0` integers
//! stay integers ([`Value::Int`] for signed types, [`Value::UInt`] for unsigned); otherwise the
//! result is a [`Value::Float`]. Two choices keep published numbers readable:
//!
//! - an `f32` widens through its shortest decimal form, so `1.1f32` reads `1.1` rather than
//!   `1.100000023841858` (the result still rounds back to the same `f32`);
//! - a scale that is the reciprocal of an integer (`0.1`, `0.01`) divides by that integer, so
//!   `235 × 0.1` reads `23.5`, not `23.500000000000004`.
//!
//! Bits (`hr:N.B`) are taken from the register value as transmitted; byte orders do not apply
//! to them. `I8` (Logix SINT, rare on Modbus) is the signed low byte of the 16-bit value.

use crate::config::{ByteOrder, DataType};

use super::Value;

/// Why registers could not be turned into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers or bits than the type and count need (a truncated response).
    #[error("need {needed} {unit}, got {got}")]
    Short {
        /// Items the type and count need.
        needed: usize,
        /// Items there were.
        got: usize,
        /// `registers` or `bits`.
        unit: &'static str,
    },
    /// A float register pair holds NaN or an infinity; a PLC uses these for "no reading".
    #[error("value is not a finite number")]
    NotFinite,
}

/// One element before scaling: what the PLC holds, typed but not yet in engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    /// A coil, a discrete input, a register bit or a `bool` register.
    Bool(bool),
    /// A signed integer type.
    Int(i64),
    /// An unsigned integer type.
    UInt(u64),
    /// `f32` (widened, see the module doc) or `f64`.
    Float(f64),
}

/// Reverses the byte order transform: registers as received → canonical big-endian integer.
///
/// `regs` holds one element (1, 2 or 4 registers).
pub fn canonical_bits(regs: &[u16], order: ByteOrder) -> u64 {
    let (reverse, swap) = transforms(order);
    let word = |i: usize| {
        let r = if reverse {
            regs[regs.len() - 1 - i]
        } else {
            regs[i]
        };
        if swap {
            r.swap_bytes()
        } else {
            r
        }
    };
    (0..regs.len()).fold(0u64, |acc, i| (acc << 16) | u64::from(word(i)))
}

/// Applies the byte order transform: canonical big-endian integer → `words` registers as sent.
pub fn wire_registers(bits: u64, words: usize, order: ByteOrder) -> Vec<u16> {
    let (reverse, swap) = transforms(order);
    let mut regs: Vec<u16> = (0..words)
        .map(|i| (bits >> (16 * (words - 1 - i))) as u16)
        .map(|r| if swap { r.swap_bytes() } else { r })
        .collect();
    if reverse {
        regs.reverse();
    }
    regs
}

/// (reverse register order, swap bytes within each register)
fn transforms(order: ByteOrder) -> (bool, bool) {
    match order {
        ByteOrder::Abcd => (false, false),
        ByteOrder::Cdab => (true, false),
        ByteOrder::Badc => (false, true),
        ByteOrder::Dcba => (true, true),
    }
}

/// Decodes one element of `data_type` from the first `data_type.registers()` registers.
pub fn decode_element(
    regs: &[u16],
    data_type: DataType,
    order: ByteOrder,
) -> Result<Raw, DecodeError> {
    let n = usize::from(data_type.registers());
    let regs = regs.get(..n).ok_or(DecodeError::Short {
        needed: n,
        got: regs.len(),
        unit: "registers",
    })?;
    let bits = canonical_bits(regs, order);
    Ok(match data_type {
        DataType::Bool => Raw::Bool(bits != 0),
        DataType::U16 => Raw::UInt(bits),
        DataType::I16 => Raw::Int(i64::from(bits as u16 as i16)),
        DataType::I8 => Raw::Int(i64::from(bits as u8 as i8)),
        DataType::U8 => Raw::UInt(bits & 0xFF),
        DataType::U32 => Raw::UInt(bits),
        DataType::I32 => Raw::Int(i64::from(bits as u32 as i32)),
        DataType::U64 => Raw::UInt(bits),
        DataType::I64 => Raw::Int(bits as i64),
        DataType::F32 => Raw::Float(widen_f32(f32::from_bits(bits as u32))),
        DataType::F64 => Raw::Float(f64::from_bits(bits)),
    })
}

/// Decodes a register signal: `count` elements (an array when `count > 1`), scaled.
pub fn decode_registers(
    regs: &[u16],
    data_type: DataType,
    count: u16,
    order: ByteOrder,
    scale: f64,
    offset: f64,
) -> Result<Value, DecodeError> {
    let width = usize::from(data_type.registers());
    let needed = width * usize::from(count.max(1));
    if regs.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: regs.len(),
            unit: "registers",
        });
    }
    collect(count, |i| {
        let raw = decode_element(&regs[i * width..], data_type, order)?;
        engineering(raw, scale, offset)
    })
}

/// Decodes `count` bits starting at bit `first_bit` of `regs[0]` (`hr:N.B`); bit 16 is bit 0
/// of the next register.
pub fn decode_register_bits(regs: &[u16], first_bit: u8, count: u16) -> Result<Value, DecodeError> {
    let first = usize::from(first_bit);
    let needed = (first + usize::from(count.max(1))).div_ceil(16);
    if regs.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: regs.len(),
            unit: "registers",
        });
    }
    collect(count, |i| {
        let bit = first + i;
        Ok(Value::Bool(regs[bit / 16] & (1 << (bit % 16)) != 0))
    })
}

/// Decodes `count` coils or discrete inputs.
pub fn decode_bits(bits: &[bool], count: u16) -> Result<Value, DecodeError> {
    let needed = usize::from(count.max(1));
    if bits.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: bits.len(),
            unit: "bits",
        });
    }
    collect(count, |i| Ok(Value::Bool(bits[i])))
}

/// A scalar for `count <= 1`, else an array of `count` elements.
fn collect(
    count: u16,
    element: impl Fn(usize) -> Result<Value, DecodeError>,
) -> Result<Value, DecodeError> {
    if count <= 1 {
        element(0)
    } else {
        (0..usize::from(count))
            .map(element)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }
}

/// Raw → engineering value (see the module doc for when integers stay integers).
pub fn engineering(raw: Raw, scale: f64, offset: f64) -> Result<Value, DecodeError> {
    let identity = scale == 1.0 && offset == 0.0;
    let value = match raw {
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) if identity => Value::Int(i),
        Raw::UInt(u) if identity => Value::UInt(u),
        Raw::Int(i) => Value::Float(apply_scale(i as f64, scale, offset)),
        Raw::UInt(u) => Value::Float(apply_scale(u as f64, scale, offset)),
        Raw::Float(f) if identity => Value::Float(f),
        Raw::Float(f) => Value::Float(apply_scale(f, scale, offset)),
    };
    match value {
        Value::Float(f) if !f.is_finite() => Err(DecodeError::NotFinite),
        v => Ok(v),
    }
}

/// `raw × scale + offset`, dividing by `1/scale` when that is an integer (`0.1` → `/ 10`), so
/// decimal scales give the decimal result an engineer expects.
fn apply_scale(raw: f64, scale: f64, offset: f64) -> f64 {
    let divisor = 1.0 / scale;
    let rounded = divisor.round();
    let scaled = if scale.abs() < 1.0 && rounded != 0.0 && (divisor - rounded).abs() < 1e-9 {
        raw / rounded
    } else {
        raw * scale
    };
    scaled + offset
}

/// Widens an `f32` through its shortest decimal representation (`1.1f32` → `1.1`).
pub fn widen_f32(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse::<f64>().unwrap_or(f64::from(f))
}

/// Encodes one raw element of `data_type` into registers as the PLC would send them in
/// `order`. `None` when the value does not fit the type (out of range, or a float for an
/// integer type). The inverse of [`decode_element`]; the simulator and tests use it.
pub fn encode(raw: Raw, data_type: DataType, order: ByteOrder) -> Option<Vec<u16>> {
    let int = |min: i128, max: i128| -> Option<u64> {
        let v: i128 = match raw {
            Raw::Int(i) => i128::from(i),
            Raw::UInt(u) => i128::from(u),
            Raw::Bool(b) => i128::from(b),
            Raw::Float(_) => return None,
        };
        (min..=max).contains(&v).then_some(v as u64)
    };
    let bits: u64 = match data_type {
        DataType::Bool => match raw {
            Raw::Bool(b) => u64::from(b),
            _ => int(0, 1)?,
        },
        DataType::U16 => int(0, i128::from(u16::MAX))?,
        DataType::I16 => u64::from(int(i16::MIN.into(), i16::MAX.into())? as i16 as u16),
        DataType::I8 => u64::from(int(i8::MIN.into(), i8::MAX.into())? as i8 as u8),
        DataType::U8 => int(0, i128::from(u8::MAX))?,
        DataType::U32 => int(0, i128::from(u32::MAX))?,
        DataType::I32 => u64::from(int(i32::MIN.into(), i32::MAX.into())? as i32 as u32),
        DataType::U64 => int(0, i128::from(u64::MAX))?,
        DataType::I64 => int(i64::MIN.into(), i64::MAX.into())?,
        DataType::F32 => match raw {
            Raw::Float(f) => u64::from((f as f32).to_bits()),
            _ => return None,
        },
        DataType::F64 => match raw {
            Raw::Float(f) => f.to_bits(),
            _ => return None,
        },
    };
    Some(wire_registers(
        bits,
        usize::from(data_type.registers()),
        order,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder::{Abcd, Badc, Cdab, Dcba};

    fn dec(regs: &[u16], t: DataType, o: ByteOrder) -> Value {
        decode_registers(regs, t, 1, o, 1.0, 0.0).expect("decodes")
    }

    /// Decodes `regs`, checks the value, and checks that encoding gives `regs` back.
    fn golden(regs: &[u16], t: DataType, o: ByteOrder, raw: Raw, expected: Value) {
        assert_eq!(dec(regs, t, o), expected, "decode {t:?} {o:?} {regs:04X?}");
        assert_eq!(
            encode(raw, t, o).as_deref(),
            Some(regs),
            "encode {t:?} {o:?} {raw:?}"
        );
    }

    // ---- f32 -----------------------------------------------------------------------------

    #[test]
    fn f32_one_arrives_as_the_spec_says_in_every_byte_order() {
        for (o, regs) in [
            (Abcd, [0x3F80, 0x0000]),
            (Cdab, [0x0000, 0x3F80]),
            (Badc, [0x803F, 0x0000]),
            (Dcba, [0x0000, 0x803F]),
        ] {
            golden(&regs, DataType::F32, o, Raw::Float(1.0), Value::Float(1.0));
        }
    }

    #[test]
    fn f32_minus_123_456_decodes_in_every_byte_order() {
        // -123.456f32 = 0xC2F6E979
        for (o, regs) in [
            (Abcd, [0xC2F6, 0xE979]),
            (Cdab, [0xE979, 0xC2F6]),
            (Badc, [0xF6C2, 0x79E9]),
            (Dcba, [0x79E9, 0xF6C2]),
        ] {
            golden(
                &regs,
                DataType::F32,
                o,
                Raw::Float(-123.456),
                Value::Float(-123.456),
            );
        }
    }

    #[test]
    fn f32_widens_through_its_shortest_decimal_form() {
        let regs = encode(Raw::Float(1.1), DataType::F32, Abcd).unwrap();
        assert_eq!(dec(&regs, DataType::F32, Abcd), Value::Float(1.1));
    }

    #[test]
    fn a_nan_float_is_not_a_value() {
        for t in [DataType::F32, DataType::F64] {
            let regs = encode(Raw::Float(f64::NAN), t, Abcd).unwrap();
            assert_eq!(
                decode_registers(&regs, t, 1, Abcd, 1.0, 0.0),
                Err(DecodeError::NotFinite)
            );
        }
    }

    // ---- 32-bit integers -----------------------------------------------------------------

    #[test]
    fn u32_0x12345678_decodes_in_every_byte_order() {
        for (o, regs) in [
            (Abcd, [0x1234, 0x5678]),
            (Cdab, [0x5678, 0x1234]),
            (Badc, [0x3412, 0x7856]),
            (Dcba, [0x7856, 0x3412]),
        ] {
            golden(
                &regs,
                DataType::U32,
                o,
                Raw::UInt(0x1234_5678),
                Value::UInt(0x1234_5678),
            );
        }
    }

    #[test]
    fn i32_minus_two_decodes_in_every_byte_order() {
        // -2i32 = 0xFFFFFFFE
        for (o, regs) in [
            (Abcd, [0xFFFF, 0xFFFE]),
            (Cdab, [0xFFFE, 0xFFFF]),
            (Badc, [0xFFFF, 0xFEFF]),
            (Dcba, [0xFEFF, 0xFFFF]),
        ] {
            golden(&regs, DataType::I32, o, Raw::Int(-2), Value::Int(-2));
        }
    }

    // ---- 64-bit --------------------------------------------------------------------------

    #[test]
    fn u64_0x0102030405060708_follows_the_64_bit_rule_of_spec_section_6() {
        for (o, regs) in [
            (Abcd, [0x0102, 0x0304, 0x0506, 0x0708]), // AB CD EF GH
            (Cdab, [0x0708, 0x0506, 0x0304, 0x0102]), // GH EF CD AB
            (Badc, [0x0201, 0x0403, 0x0605, 0x0807]), // BA DC FE HG
            (Dcba, [0x0807, 0x0605, 0x0403, 0x0201]), // HG FE DC BA
        ] {
            golden(
                &regs,
                DataType::U64,
                o,
                Raw::UInt(0x0102_0304_0506_0708),
                Value::UInt(0x0102_0304_0506_0708),
            );
        }
    }

    #[test]
    fn i64_minus_two_decodes_in_every_byte_order() {
        for (o, regs) in [
            (Abcd, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
            (Cdab, [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
            (Badc, [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF]),
            (Dcba, [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
        ] {
            golden(&regs, DataType::I64, o, Raw::Int(-2), Value::Int(-2));
        }
    }

    #[test]
    fn f64_one_decodes_in_every_byte_order() {
        // 1.0f64 = 0x3FF0000000000000
        for (o, regs) in [
            (Abcd, [0x3FF0, 0x0000, 0x0000, 0x0000]),
            (Cdab, [0x0000, 0x0000, 0x0000, 0x3FF0]),
            (Badc, [0xF03F, 0x0000, 0x0000, 0x0000]),
            (Dcba, [0x0000, 0x0000, 0x0000, 0xF03F]),
        ] {
            golden(&regs, DataType::F64, o, Raw::Float(1.0), Value::Float(1.0));
        }
    }

    #[test]
    fn f64_minus_123_456_decodes_in_every_byte_order() {
        // -123.456f64 = 0xC05EDD2F1A9FBE77
        for (o, regs) in [
            (Abcd, [0xC05E, 0xDD2F, 0x1A9F, 0xBE77]),
            (Cdab, [0xBE77, 0x1A9F, 0xDD2F, 0xC05E]),
            (Badc, [0x5EC0, 0x2FDD, 0x9F1A, 0x77BE]),
            (Dcba, [0x77BE, 0x9F1A, 0x2FDD, 0x5EC0]),
        ] {
            golden(
                &regs,
                DataType::F64,
                o,
                Raw::Float(-123.456),
                Value::Float(-123.456),
            );
        }
    }

    // ---- 16-bit --------------------------------------------------------------------------

    #[test]
    fn u16_0xabcd_is_swapped_only_by_badc_and_dcba() {
        for (o, reg) in [
            (Abcd, 0xABCD),
            (Cdab, 0xABCD),
            (Badc, 0xCDAB),
            (Dcba, 0xCDAB),
        ] {
            golden(
                &[reg],
                DataType::U16,
                o,
                Raw::UInt(0xABCD),
                Value::UInt(0xABCD),
            );
        }
    }

    #[test]
    fn i16_minus_two_is_swapped_only_by_badc_and_dcba() {
        for (o, reg) in [
            (Abcd, 0xFFFE),
            (Cdab, 0xFFFE),
            (Badc, 0xFEFF),
            (Dcba, 0xFEFF),
        ] {
            golden(&[reg], DataType::I16, o, Raw::Int(-2), Value::Int(-2));
        }
    }

    #[test]
    fn i8_is_the_signed_low_byte_of_the_register() {
        for (o, reg) in [
            (Abcd, 0x00FE),
            (Cdab, 0x00FE),
            (Badc, 0xFE00),
            (Dcba, 0xFE00),
        ] {
            golden(&[reg], DataType::I8, o, Raw::Int(-2), Value::Int(-2));
        }
        // The high byte is ignored.
        assert_eq!(dec(&[0x127F], DataType::I8, Abcd), Value::Int(127));
    }

    #[test]
    fn a_bool_register_is_true_when_non_zero() {
        assert_eq!(dec(&[0], DataType::Bool, Abcd), Value::Bool(false));
        assert_eq!(dec(&[0x0100], DataType::Bool, Abcd), Value::Bool(true));
    }

    // ---- scaling, arrays, bits, errors ---------------------------------------------------

    #[test]
    fn integers_stay_integers_without_scale_or_offset() {
        assert_eq!(dec(&[7], DataType::U16, Abcd), Value::UInt(7));
        assert_eq!(dec(&[0xFFF9], DataType::I16, Abcd), Value::Int(-7));
    }

    #[test]
    fn a_decimal_scale_gives_the_decimal_engineering_value() {
        let v = decode_registers(&[235], DataType::I16, 1, Abcd, 0.1, 0.0).unwrap();
        assert_eq!(v, Value::Float(23.5));
        let v = decode_registers(&[0xFFFE], DataType::I16, 1, Abcd, 0.1, 0.0).unwrap();
        assert_eq!(v, Value::Float(-0.2));
        let v = decode_registers(&[12345], DataType::U16, 1, Abcd, 0.01, 0.0).unwrap();
        assert_eq!(v, Value::Float(123.45));
    }

    #[test]
    fn scale_and_offset_make_a_float_from_an_integer() {
        let v = decode_registers(&[100], DataType::U16, 1, Abcd, 2.0, -40.0).unwrap();
        assert_eq!(v, Value::Float(160.0));
        let v = decode_registers(&[100], DataType::U16, 1, Abcd, 1.0, 0.5).unwrap();
        assert_eq!(v, Value::Float(100.5));
    }

    #[test]
    fn count_above_one_reads_an_array_of_consecutive_elements() {
        let v = decode_registers(&[1, 2, 3, 4], DataType::U16, 4, Abcd, 1.0, 0.0).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::UInt(1),
                Value::UInt(2),
                Value::UInt(3),
                Value::UInt(4)
            ])
        );
        let v = decode_registers(&[0, 1, 0, 2], DataType::U32, 2, Cdab, 1.0, 0.0).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![Value::UInt(0x10000), Value::UInt(0x20000)])
        );
    }

    #[test]
    fn a_short_slice_is_an_error_not_a_panic() {
        assert_eq!(
            decode_registers(&[1], DataType::F32, 1, Abcd, 1.0, 0.0),
            Err(DecodeError::Short {
                needed: 2,
                got: 1,
                unit: "registers"
            })
        );
        assert!(decode_registers(&[1, 2, 3], DataType::U16, 4, Abcd, 1.0, 0.0).is_err());
        assert!(decode_bits(&[], 1).is_err());
        assert!(decode_register_bits(&[0], 15, 2).is_err());
    }

    #[test]
    fn register_bits_count_from_the_least_significant_bit() {
        assert_eq!(decode_register_bits(&[0x0008], 3, 1), Ok(Value::Bool(true)));
        assert_eq!(
            decode_register_bits(&[0x0008], 2, 1),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            decode_register_bits(&[0x8000], 15, 1),
            Ok(Value::Bool(true))
        );
        // Bits continue into the next register.
        assert_eq!(
            decode_register_bits(&[0x8000, 0x0001], 15, 2),
            Ok(Value::Array(vec![Value::Bool(true), Value::Bool(true)]))
        );
    }

    #[test]
    fn coils_decode_as_bools() {
        assert_eq!(decode_bits(&[true], 1), Ok(Value::Bool(true)));
        assert_eq!(
            decode_bits(&[false, true, false], 2),
            Ok(Value::Array(vec![Value::Bool(false), Value::Bool(true)]))
        );
    }

    #[test]
    fn encode_refuses_values_that_do_not_fit_the_type() {
        assert_eq!(encode(Raw::Int(-1), DataType::U16, Abcd), None);
        assert_eq!(encode(Raw::UInt(70_000), DataType::U16, Abcd), None);
        assert_eq!(encode(Raw::Int(40_000), DataType::I16, Abcd), None);
        assert_eq!(encode(Raw::Float(1.0), DataType::U32, Abcd), None);
        assert_eq!(encode(Raw::UInt(1), DataType::F32, Abcd), None);
        assert_eq!(encode(Raw::UInt(u64::MAX), DataType::I64, Abcd), None);
    }

    #[test]
    fn every_type_round_trips_through_every_byte_order() {
        let cases = [
            (DataType::U16, Raw::UInt(0xBEEF)),
            (DataType::I16, Raw::Int(-12345)),
            (DataType::U32, Raw::UInt(0xDEAD_BEEF)),
            (DataType::I32, Raw::Int(-123_456_789)),
            (DataType::U64, Raw::UInt(u64::MAX - 5)),
            (DataType::I64, Raw::Int(i64::MIN + 3)),
            (DataType::F32, Raw::Float(0.5)),
            (DataType::F64, Raw::Float(std::f64::consts::PI)),
            (DataType::I8, Raw::Int(-128)),
            (DataType::Bool, Raw::Bool(true)),
        ];
        for o in [Abcd, Cdab, Badc, Dcba] {
            for (t, raw) in cases {
                let regs = encode(raw, t, o).unwrap();
                assert_eq!(regs.len(), usize::from(t.registers()));
                assert_eq!(decode_element(&regs, t, o), Ok(raw), "{t:?} {o:?}");
            }
        }
    }
}
