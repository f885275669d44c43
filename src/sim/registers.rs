//! The register map of the simulated PLCs: a Modbus request and an [`Image`] in, the answer
//! out. Pure, so the map is tested without a socket.
//!
//! | address        | content                                   | type          |
//! |----------------|-------------------------------------------|---------------|
//! | `co:0`         | running                                   | bool          |
//! | `hr:100`       | speed, units/min                          | f32 ABCD      |
//! | `hr:102`       | good count                                | u32 ABCD      |
//! | `hr:104`       | reject count                              | u32 ABCD      |
//! | `hr:110..=113` | fault words (bit n of word k = fault 16k+n) | u16 × 4     |
//! | `ir:10`        | motor temperature, 0.1 °C                 | i16           |
//!
//! Every other address in `0..=`[`LAST_ADDRESS`] of every table reads 0 / false. A read that
//! reaches past it answers `IllegalDataAddress`; a quantity of 0 or above the protocol limit
//! answers `IllegalDataValue`; every other function (all writes included) answers
//! `IllegalFunction` — the simulated PLC is read-only, like the gateway.

use tokio_modbus::{ExceptionCode, Request, Response};

use super::scenario::Image;
use crate::acquire::decode::{encode, Raw};
use crate::config::{ByteOrder, DataType};

/// The highest address that exists in each table.
pub const LAST_ADDRESS: u16 = 1000;
/// `co:0`
pub const RUNNING_COIL: u16 = 0;
/// `hr:100`, f32 ABCD.
pub const SPEED_HR: u16 = 100;
/// `hr:102`, u32 ABCD.
pub const GOOD_COUNT_HR: u16 = 102;
/// `hr:104`, u32 ABCD.
pub const REJECT_COUNT_HR: u16 = 104;
/// `hr:110..=113`.
pub const FAULT_WORDS_HR: u16 = 110;
/// `ir:10`, i16 in 0.1 °C.
pub const MOTOR_TEMP_IR: u16 = 10;

/// The value of holding register `address`.
pub fn holding_register(image: &Image, address: u16) -> u16 {
    let pair = |raw: Raw, t: DataType, i: u16| -> u16 {
        encode(raw, t, ByteOrder::Abcd)
            .and_then(|regs| regs.get(usize::from(i)).copied())
            .unwrap_or(0)
    };
    match address {
        a @ SPEED_HR..=101 => pair(
            Raw::Float(f64::from(image.speed)),
            DataType::F32,
            a - SPEED_HR,
        ),
        a @ GOOD_COUNT_HR..=103 => pair(
            Raw::UInt(image.good_count.into()),
            DataType::U32,
            a - GOOD_COUNT_HR,
        ),
        a @ REJECT_COUNT_HR..=105 => pair(
            Raw::UInt(image.reject_count.into()),
            DataType::U32,
            a - REJECT_COUNT_HR,
        ),
        a @ FAULT_WORDS_HR..=113 => image.fault_words[usize::from(a - FAULT_WORDS_HR)],
        _ => 0,
    }
}

/// The value of input register `address`.
pub fn input_register(image: &Image, address: u16) -> u16 {
    match address {
        MOTOR_TEMP_IR => image.temp_raw as u16,
        _ => 0,
    }
}

/// The value of coil `address`.
pub fn coil(image: &Image, address: u16) -> bool {
    address == RUNNING_COIL && image.running
}

/// Checks quantity and range the way a PLC does: quantity first, then addresses.
fn check(start: u16, quantity: u16, max_quantity: u16) -> Result<(), ExceptionCode> {
    if quantity == 0 || quantity > max_quantity {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let last = u32::from(start) + u32::from(quantity) - 1;
    if last > u32::from(LAST_ADDRESS) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

/// Answers one request from `image`.
pub fn answer(image: &Image, request: &Request<'_>) -> Result<Response, ExceptionCode> {
    let words = |start: u16, quantity: u16, read: fn(&Image, u16) -> u16| {
        check(start, quantity, 125)?;
        Ok((start..=start + (quantity - 1))
            .map(|a| read(image, a))
            .collect::<Vec<u16>>())
    };
    let bits = |start: u16, quantity: u16, read: fn(&Image, u16) -> bool| {
        check(start, quantity, 2000)?;
        Ok((start..=start + (quantity - 1))
            .map(|a| read(image, a))
            .collect::<Vec<bool>>())
    };
    match *request {
        Request::ReadCoils(start, quantity) => bits(start, quantity, coil).map(Response::ReadCoils),
        Request::ReadDiscreteInputs(start, quantity) => {
            bits(start, quantity, |_, _| false).map(Response::ReadDiscreteInputs)
        }
        Request::ReadHoldingRegisters(start, quantity) => {
            words(start, quantity, holding_register).map(Response::ReadHoldingRegisters)
        }
        Request::ReadInputRegisters(start, quantity) => {
            words(start, quantity, input_register).map(Response::ReadInputRegisters)
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

/// Whether `request` writes anything (the simulator refuses every write).
pub fn is_write(request: &Request<'_>) -> bool {
    !matches!(
        request,
        Request::ReadCoils(..)
            | Request::ReadDiscreteInputs(..)
            | Request::ReadHoldingRegisters(..)
            | Request::ReadInputRegisters(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acquire::decode::decode_registers;
    use crate::acquire::Value;
    use std::borrow::Cow;

    fn image() -> Image {
        Image {
            running: true,
            speed: 110.0,
            good_count: 0x0001_86A0, // 100 000
            reject_count: 2_500,
            fault_words: [0x0001, 0, 0x8000, 0],
            temp_raw: -123,
        }
    }

    fn read_hr(start: u16, quantity: u16) -> Vec<u16> {
        match answer(&image(), &Request::ReadHoldingRegisters(start, quantity)) {
            Ok(Response::ReadHoldingRegisters(w)) => w,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_holding_registers_carry_speed_counts_and_fault_words() {
        let regs = read_hr(100, 14);
        let dec = |i: usize, t| decode_registers(&regs[i..], t, 1, ByteOrder::Abcd, 1.0, 0.0);
        assert_eq!(&regs[0..2], &[0x42DC, 0x0000]); // 110.0f32
        assert_eq!(dec(0, DataType::F32), Ok(Value::Float(110.0)));
        assert_eq!(dec(2, DataType::U32), Ok(Value::UInt(100_000)));
        assert_eq!(dec(4, DataType::U32), Ok(Value::UInt(2_500)));
        assert_eq!(&regs[6..10], &[0, 0, 0, 0]);
        assert_eq!(&regs[10..14], &[0x0001, 0, 0x8000, 0]);
    }

    #[test]
    fn the_running_coil_and_the_temperature_register_follow_the_image() {
        assert_eq!(
            answer(&image(), &Request::ReadCoils(0, 3)),
            Ok(Response::ReadCoils(vec![true, false, false]))
        );
        assert_eq!(
            answer(&image(), &Request::ReadInputRegisters(10, 1)),
            Ok(Response::ReadInputRegisters(vec![(-123i16) as u16]))
        );
    }

    #[test]
    fn unmapped_addresses_up_to_1000_read_as_zero() {
        assert_eq!(read_hr(876, 125), vec![0; 125]);
        assert_eq!(
            answer(&image(), &Request::ReadDiscreteInputs(0, 1001)),
            Ok(Response::ReadDiscreteInputs(vec![false; 1001]))
        );
        assert_eq!(read_hr(1000, 1), vec![0]);
    }

    #[test]
    fn a_read_past_address_1000_is_an_illegal_data_address() {
        for request in [
            Request::ReadHoldingRegisters(1001, 1),
            Request::ReadHoldingRegisters(999, 3),
            Request::ReadInputRegisters(65535, 1),
            Request::ReadCoils(1000, 2),
            Request::ReadDiscreteInputs(2000, 1),
        ] {
            assert_eq!(
                answer(&image(), &request),
                Err(ExceptionCode::IllegalDataAddress),
                "{request:?}"
            );
        }
    }

    #[test]
    fn a_quantity_of_zero_or_above_the_limit_is_an_illegal_data_value() {
        assert_eq!(
            answer(&image(), &Request::ReadHoldingRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            answer(&image(), &Request::ReadHoldingRegisters(0, 126)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            answer(&image(), &Request::ReadCoils(0, 2001)),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn every_write_is_an_illegal_function() {
        for request in [
            Request::WriteSingleCoil(0, true),
            Request::WriteMultipleCoils(0, Cow::Owned(vec![true])),
            Request::WriteSingleRegister(100, 1),
            Request::WriteMultipleRegisters(100, Cow::Owned(vec![1, 2])),
            Request::MaskWriteRegister(110, 0, 1),
            Request::ReadWriteMultipleRegisters(100, 1, 100, Cow::Owned(vec![1])),
        ] {
            assert_eq!(
                answer(&image(), &request),
                Err(ExceptionCode::IllegalFunction),
                "{request:?}"
            );
        }
    }
}
