//! Configuration: the one TOML file a controls engineer edits over SSH.
//!
//! The file is read in two steps (see `load`): the TOML text is parsed into a spanned
//! document, then *compiled* into the validated [`Config`] below. Compilation collects every
//! problem at once, each with file, line, column, the key and a hint, so an engineer fixes a
//! file in one round trip instead of one error per restart.
//!
//! Invariants of a [`Config`] value: every cross-reference resolves (equipment → PLC, planned
//! stop → shift), every range holds, names are unique and topic-safe, shifts do not overlap,
//! and every signal address is well formed for its PLC's protocol. Code downstream never
//! re-checks these and never sees an `Option` that "must be `Some` by now".
//!
//! The names of the config enums ([`Severity`], [`FaultCategory`], [`EquipmentType`],
//! [`ByteOrder`], and [`DataType`] per protocol) are written once, as one name table each
//! (`NAMES`, `DataType::MODBUS_NAMES` / `LOGIX_NAMES`): the loader parses with the table and
//! `as_str()` / `Display` print from it, so events and messages use the names of the file.

mod load;

pub use load::{load_file, load_str, ConfigError, ConfigErrors, Loaded, MIN_COMMAND_KEY_BYTES};

use std::fmt;
use std::path::PathBuf;

/// Declares the one name table of a config enum and derives both directions from it:
/// `NAMES` (name → value: what the loader parses, listed in this order in its messages) and
/// `as_str()` / `Display` (value → name: for events, status and messages). A variant missing
/// from the list does not compile, so parsing and printing cannot drift apart.
macro_rules! vocabulary {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every value with its name in the config file, in the order messages list them.
            pub const NAMES: &'static [(&'static str, $ty)] = &[$(($name, $ty::$variant)),+];

            /// The name of this value in the config file (and in events).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The validated configuration of one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway: Gateway,
    /// `None` when the file has no `[mqtt]` table: the gateway then buffers everything.
    pub mqtt: Option<Mqtt>,
    pub storage: Storage,
    pub telemetry: Telemetry,
    pub plcs: Vec<Plc>,
    pub shifts: Vec<Shift>,
    pub planned_stops: Vec<PlannedStop>,
    pub equipment: Vec<Equipment>,
    /// `[commands]`; the defaults of SPEC §7 when the table is absent.
    pub commands: Commands,
    /// `[metrics]` (SPEC §10); `None` when the table is absent: no HTTP server.
    pub metrics: Option<Metrics>,
    /// `[sparkplug]` (SPEC §8); `None` when the table is absent: no Sparkplug session.
    pub sparkplug: Option<Sparkplug>,
}

/// `[sparkplug]` (SPEC §8): the gateway as a Sparkplug B edge node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparkplug {
    pub group_id: String,
    pub edge_node_id: String,
    /// Birth only while this host's `spBv1.0/STATE/{host}` says online.
    pub primary_host_id: Option<String>,
    /// Also publish SPEC §4's CloudEvents topics (over their own connection).
    pub cloudevents: bool,
}

impl Config {
    /// Whether the CloudEvents connection runs (`[mqtt]` present and not
    /// `sparkplug.cloudevents = false`).
    pub fn cloudevents(&self) -> bool {
        self.mqtt.is_some() && self.sparkplug.as_ref().is_none_or(|s| s.cloudevents)
    }
}

impl Config {
    /// The PLC an equipment reads from; total because compilation resolved every reference.
    pub fn plc(&self, name: &str) -> Option<&Plc> {
        self.plcs.iter().find(|p| p.name == name)
    }

    /// Equipment polled through the named PLC, in file order.
    pub fn equipment_of<'a>(&'a self, plc: &'a str) -> impl Iterator<Item = &'a Equipment> + 'a {
        self.equipment.iter().filter(move |e| e.plc == plc)
    }

    /// The heartbeat deadline of SPEC §6: 3 × the slowest PLC's poll interval.
    pub fn heartbeat_deadline_ms(&self) -> u64 {
        3 * self
            .plcs
            .iter()
            .map(|p| p.poll_interval_ms)
            .max()
            .unwrap_or(1000)
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// `[A-Za-z0-9_-]{1,64}`; appears in topics and CloudEvents `source`.
    pub id: String,
    pub data_dir: PathBuf,
    /// IANA zone name, validated against the bundled time-zone database.
    pub timezone: String,
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq)]
pub struct Mqtt {
    pub url: MqttUrl,
    pub client_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive_s: u64,
    pub max_inflight: u16,
    /// Tried in order after `url` when the current broker is unreachable (same TLS settings).
    pub failover_urls: Vec<MqttUrl>,
    pub protocol: MqttProtocol,
    /// Largest packet sent or accepted, KiB (1024 bytes); announced as Maximum Packet Size.
    pub max_packet_kb: u32,
    /// Cap of the reconnect backoff.
    pub reconnect_max_s: u64,
    /// On a failover broker, try `url` again after this long; 0 = stay.
    pub return_to_primary_s: u64,
}

impl Mqtt {
    /// `url` followed by `failover_urls`: the order brokers are tried in.
    pub fn brokers(&self) -> Vec<MqttUrl> {
        std::iter::once(self.url.clone())
            .chain(self.failover_urls.iter().cloned())
            .collect()
    }

    /// `max_packet_kb` in bytes.
    pub fn max_packet_bytes(&self) -> usize {
        self.max_packet_kb as usize * 1024
    }
}

/// `mqtt.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 5.0 (the default): PUBACK reason codes, Maximum Packet Size, session expiry.
    V5,
    /// MQTT 3.1.1, for brokers too old for 5.0.
    V311,
}

impl MqttUrl {
    /// `host:port`, as `P/status.broker` names it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A parsed broker URL: scheme decides TLS, port defaults per scheme (1883 / 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Every command of SPEC §4, as it appears in `P/cmd/{equipment}/{command}`.
pub const COMMAND_NAMES: &[&str] = &[
    "context",
    "job/assign",
    "job/start",
    "job/complete",
    "job/cancel",
    "changeover/start",
    "changeover/complete",
    "planned-stop/start",
    "planned-stop/end",
    "andon/ack",
    "andon/resolve",
    "downtime/reason",
    "maintenance/done",
    "query/oee",
    "query/downtime",
    "query/jobs",
];

/// `[metrics]` (SPEC §10): the metrics and health endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Where the HTTP server listens; loopback unless `allow_remote`.
    pub listen: std::net::SocketAddr,
    /// A non-loopback `listen` is allowed only with this set.
    pub allow_remote: bool,
    /// `/readyz` fails when the oldest unsent outbox message is older than this.
    pub ready_max_backlog_s: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9105)),
            allow_remote: false,
            ready_max_backlog_s: 300,
        }
    }
}

/// `[commands]` (SPEC §7): which inbound commands are accepted and how they must be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Commands {
    /// Exact command names (`andon/ack`) and `prefix/*` patterns (`job/*`), each naming at
    /// least one command of [`COMMAND_NAMES`]. Default: every command name.
    pub enabled: Vec<String>,
    /// Largest age (either way) of a command's `issued_at`; 0 turns the check off.
    pub max_age_s: u64,
    /// A command without `issued_at` is refused (always the case with `key_file`, see
    /// [`Commands::issued_at_required`]).
    pub require_issued_at: bool,
    /// The HMAC key of signed commands; `None`: commands are not signed.
    pub key_file: Option<PathBuf>,
    /// A planned stop started by command ends by itself after this long.
    pub max_planned_stop_min: u32,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            enabled: COMMAND_NAMES.iter().map(|c| c.to_string()).collect(),
            max_age_s: 60,
            require_issued_at: false,
            key_file: None,
            max_planned_stop_min: 120,
        }
    }
}

impl Commands {
    /// Whether `command` (below the equipment: `andon/ack`) is matched by `enabled`.
    pub fn is_enabled(&self, command: &str) -> bool {
        self.enabled
            .iter()
            .any(|pattern| command_matches(pattern, command))
    }

    /// A command must carry `issued_at`: asked for, or implied by signing.
    pub fn issued_at_required(&self) -> bool {
        self.require_issued_at || self.key_file.is_some()
    }
}

/// `andon/ack` matches itself; `andon/*` matches every command below `andon/`.
pub fn command_matches(pattern: &str, command: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(prefix) => command
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/')),
        None => pattern == command,
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    pub max_outbox_mb: u64,
    pub retention_days: u32,
    pub telemetry_retention_days: u32,
}

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// 0 = one telemetry message per poll.
    pub publish_interval_ms: u64,
    pub store_and_forward: bool,
}

/// One `[[plc]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plc {
    /// `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failed polls before this PLC's equipment is `offline` (SPEC §6: 3).
    pub offline_after_polls: u32,
    pub protocol: Protocol,
}

/// Protocol-specific settings of a PLC.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    ModbusTcp {
        unit_id: u8,
        byte_order: ByteOrder,
    },
    EthernetIp {
        slot: u8,
    },
    /// SPEC §9: Modbus RTU on a serial port (`Plc::host` holds the device path, `port` is 0).
    ModbusRtu(Rtu),
    /// SPEC §9: an OPC UA server (`Plc::host`/`port` come from the endpoint URL).
    OpcUa(OpcUa),
}

/// `protocol = "opc-ua"`: where the server is and how the client proves itself.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUa {
    /// `opc.tcp://host[:port][/path]`.
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub username: Option<String>,
    /// Resolved against the config file's directory; read at connect time.
    pub password_file: Option<PathBuf>,
    /// Own certificate under `own/`, server certificates under `trusted/` and `rejected/`.
    pub pki_dir: PathBuf,
    pub trust_server: TrustServer,
}

/// OPC UA security policy (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityPolicy {
    None,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

vocabulary! { SecurityPolicy {
    "None" => None,
    "Basic256Sha256" => Basic256Sha256,
    "Aes128Sha256RsaOaep" => Aes128Sha256RsaOaep,
    "Aes256Sha256RsaPss" => Aes256Sha256RsaPss,
} }

/// OPC UA message security mode (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

vocabulary! { SecurityMode {
    "None" => None,
    "Sign" => Sign,
    "SignAndEncrypt" => SignAndEncrypt,
} }

/// How a server certificate becomes trusted (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustServer {
    /// The server's certificate must already be in `pki_dir/trusted`.
    Pinned,
    /// The first certificate seen is stored in `trusted/`; a different one later is refused.
    FirstUse,
}

vocabulary! { TrustServer {
    "pinned" => Pinned,
    "first-use" => FirstUse,
} }

/// `protocol = "modbus-rtu"`: where the bus is and who this PLC is on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rtu {
    /// The serial device, e.g. `/dev/ttyS1`; PLCs naming the same one share the bus.
    pub device: String,
    pub bus: SerialBus,
    pub unit_id: u8,
    pub byte_order: ByteOrder,
}

/// The settings every PLC on one serial bus must agree on (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialBus {
    /// 1200 ..= 921600.
    pub baud: u32,
    pub parity: Parity,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Kernel RS-485 mode (RTS on send) where the UART supports it.
    pub rs485: bool,
}

impl SerialBus {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// `parity` of a serial bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

vocabulary! { Parity {
    "none" => None,
    "even" => Even,
    "odd" => Odd,
} }

/// Word/byte order of multi-register values, named after how `1.0f32 = 0x3F800000` arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

vocabulary! { ByteOrder {
    "ABCD" => Abcd,
    "CDAB" => Cdab,
    "BADC" => Badc,
    "DCBA" => Dcba,
} }

/// One `[[shift]]`; `start == end` means a 24 h shift.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub name: String,
    /// Minutes after local midnight.
    pub start_min: u32,
    pub end_min: u32,
}

/// One `[[planned_stop]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStop {
    pub name: String,
    pub start_min: u32,
    pub duration_min: u32,
    /// Empty = every day, every shift.
    pub shifts: Vec<String>,
}

/// One `[[equipment]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Equipment {
    pub code: String,
    pub name: String,
    pub plc: String,
    /// SPEC §9: overrides the PLC's `unit_id` (Modbus TCP gateways, RTU buses).
    pub unit_id: Option<u8>,
    pub line_id: String,
    pub position_in_line: u32,
    pub primary: bool,
    pub kind: EquipmentType,
    pub criticality: u8,
    pub ideal_rate_per_min: f64,
    pub micro_stop_s: u64,
    pub location: Option<String>,
    pub department: Option<String>,
    /// Hours of `running` time between maintenances (integer or decimal; SPEC §11).
    pub maintenance_interval_hours: Option<f64>,
    /// `last_maintenance_date` as UTC epoch ms (a date alone is its 00:00 UTC).
    pub last_maintenance_ms: Option<i64>,
    pub oee_targets: OeeTargets,
    pub signals: Signals,
    pub faults: Vec<Fault>,
    pub andon: AndonRules,
}

/// `type` of an equipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EquipmentType {
    Production,
    Utility,
    Support,
    Conveyor,
    Packaging,
}

vocabulary! { EquipmentType {
    "production" => Production,
    "utility" => Utility,
    "support" => Support,
    "conveyor" => Conveyor,
    "packaging" => Packaging,
} }

/// `[equipment.oee_targets]`; each in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OeeTargets {
    pub availability: f64,
    pub performance: f64,
    pub quality: f64,
    pub oee: f64,
}

/// `[equipment.signals]`: the engine's inputs plus extra telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    pub running: Signal,
    pub speed: Option<Signal>,
    pub good_count: Signal,
    pub reject_count: Option<Signal>,
    pub faults: Option<Signal>,
    /// `[equipment.signals.extra]`, in file order.
    pub extra: Vec<(String, Signal)>,
}

impl Signals {
    /// Bytes of the widest `telemetry` data this equipment can produce: every signal at its
    /// widest JSON value (arrays in full), with its quality entry.
    pub fn widest_telemetry_data(&self) -> usize {
        let mut values = 2; // {}
        let mut quality = 2;
        for (name, s) in self.all() {
            let element = match s.data_type {
                _ if s.scale != 1.0 || s.offset != 0.0 => 24,
                DataType::Bool => 5,
                DataType::U16 => 5,
                DataType::I16 | DataType::I8 => 6,
                DataType::U8 => 3,
                DataType::U32 => 10,
                DataType::I32 => 11,
                DataType::U64 | DataType::I64 => 20,
                DataType::F32 | DataType::F64 => 24,
            };
            let value = if s.count > 1 {
                2 + usize::from(s.count) * (element + 1)
            } else {
                element
            };
            values += name.len() + 3 + value + 1;
            quality += name.len() + 3 + "\"stale\"".len() + 1;
        }
        // {"values":…,"quality":…}
        values + quality + 24
    }

    /// Every signal with the name it is published under, engine signals first.
    pub fn all(&self) -> Vec<(&str, &Signal)> {
        let mut v: Vec<(&str, &Signal)> = vec![("running", &self.running)];
        if let Some(s) = &self.speed {
            v.push(("speed", s));
        }
        v.push(("good_count", &self.good_count));
        if let Some(s) = &self.reject_count {
            v.push(("reject_count", s));
        }
        if let Some(s) = &self.faults {
            v.push(("faults", s));
        }
        v.extend(self.extra.iter().map(|(n, s)| (n.as_str(), s)));
        v
    }
}

/// One signal: where it lives, its type, how many elements and how to scale it.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub source: SignalSource,
    pub data_type: DataType,
    /// Array length (`count`), 1 for a scalar.
    pub count: u16,
    pub scale: f64,
    pub offset: f64,
}

/// Where a signal is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalSource {
    Modbus {
        address: ModbusAddress,
        /// Per-signal override, else the PLC's `byte_order`.
        byte_order: ByteOrder,
    },
    Tag {
        tag: String,
    },
    /// OPC UA node id as written (`ns=2;i=1001`, `ns=3;s=…`, `g=…`, `b=…`), validated at load.
    Node {
        node: String,
    },
}

/// A zero-based Modbus protocol address with its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModbusAddress {
    Coil(u16),
    DiscreteInput(u16),
    InputRegister(u16),
    HoldingRegister(u16),
    /// `hr:N.B`
    HoldingRegisterBit(u16, u8),
    /// `ir:N.B`
    InputRegisterBit(u16, u8),
}

/// Declared value type. Modbus uses `bool u16 i16 u32 i32 u64 i64 f32 f64`; Logix tags use
/// `bool sint int dint lint real lreal` (mapped onto the same set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Logix SINT
    I8,
    /// OPC UA Byte (SPEC §9); no Modbus or Logix name.
    U8,
}

impl DataType {
    /// The Modbus `type` names, in the order messages list them. Logix SINT (`I8`) has none.
    pub const MODBUS_NAMES: &'static [(&'static str, DataType)] = &[
        ("bool", DataType::Bool),
        ("u16", DataType::U16),
        ("i16", DataType::I16),
        ("u32", DataType::U32),
        ("i32", DataType::I32),
        ("u64", DataType::U64),
        ("i64", DataType::I64),
        ("f32", DataType::F32),
        ("f64", DataType::F64),
    ];

    /// The Logix tag `type` names, in the order messages list them. The unsigned types have
    /// none (Logix integers are signed).
    pub const LOGIX_NAMES: &'static [(&'static str, DataType)] = &[
        ("bool", DataType::Bool),
        ("sint", DataType::I8),
        ("int", DataType::I16),
        ("dint", DataType::I32),
        ("lint", DataType::I64),
        ("real", DataType::F32),
        ("lreal", DataType::F64),
    ];

    /// The Modbus name of this type; `None` for `I8`, which only Logix tags have.
    pub fn modbus_name(self) -> Option<&'static str> {
        name_in(Self::MODBUS_NAMES, self)
    }

    /// The Logix name of this type; `None` for the unsigned types.
    pub fn logix_name(self) -> Option<&'static str> {
        name_in(Self::LOGIX_NAMES, self)
    }

    /// The name in the vocabulary of a protocol: Logix names when `logix`, else Modbus names.
    pub fn name(self, logix: bool) -> Option<&'static str> {
        if logix {
            self.logix_name()
        } else {
            self.modbus_name()
        }
    }

    /// One name for every type: the Modbus name, else (for `I8`) the Logix one.
    pub fn as_str(self) -> &'static str {
        if self == DataType::U8 {
            return "u8";
        }
        self.modbus_name()
            .or_else(|| self.logix_name())
            .unwrap_or("?")
    }

    /// The OPC UA `type` names (SPEC §9: the §2 names plus `i8` and `u8`).
    pub const OPCUA_NAMES: &'static [(&'static str, DataType)] = &[
        ("bool", DataType::Bool),
        ("i8", DataType::I8),
        ("u8", DataType::U8),
        ("i16", DataType::I16),
        ("u16", DataType::U16),
        ("i32", DataType::I32),
        ("u32", DataType::U32),
        ("i64", DataType::I64),
        ("u64", DataType::U64),
        ("f32", DataType::F32),
        ("f64", DataType::F64),
    ];

    /// Registers one element occupies on Modbus.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::I8 | DataType::U8 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// One `[[equipment.fault]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub bit: u32,
    pub code: String,
    pub description: String,
    pub category: FaultCategory,
    pub severity: Severity,
    pub andon: bool,
}

/// Fault category as reported in downtime events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCategory {
    Mechanical,
    Electrical,
    Material,
    Quality,
    Safety,
    Operator,
    Other,
}

vocabulary! { FaultCategory {
    "mechanical" => Mechanical,
    "electrical" => Electrical,
    "material" => Material,
    "quality" => Quality,
    "safety" => Safety,
    "operator" => Operator,
    "other" => Other,
} }

/// `[equipment.andon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AndonRules {
    /// Seconds of fault downtime before an andon, by severity: low, medium, high, critical.
    pub raise_after_s: [u64; 4],
    pub escalate_after_s: Vec<u64>,
    pub quality_reject_rate: f64,
    pub speed_ratio: f64,
    pub speed_after_s: u64,
}

impl Default for AndonRules {
    fn default() -> Self {
        AndonRules {
            raise_after_s: [600, 300, 60, 0],
            escalate_after_s: vec![300, 900],
            quality_reject_rate: 0.05,
            speed_ratio: 0.80,
            speed_after_s: 300,
        }
    }
}

/// Fault severity; decides andon timing and priority (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

vocabulary! { Severity {
    "low" => Low,
    "medium" => Medium,
    "high" => High,
    "critical" => Critical,
} }

/// The name of `value` in a name table.
fn name_in<E: Copy + PartialEq>(table: &[(&'static str, E)], value: E) -> Option<&'static str> {
    table.iter().find(|(_, v)| *v == value).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each name parses to a value that prints as the same name, and each value appears once.
    fn round_trips<E: Copy + PartialEq + fmt::Debug>(
        table: &[(&str, E)],
        as_str: fn(E) -> &'static str,
    ) {
        for (i, (name, value)) in table.iter().enumerate() {
            assert_eq!(as_str(*value), *name);
            assert!(
                table[..i].iter().all(|(n, v)| n != name && v != value),
                "{name} listed twice"
            );
        }
    }

    #[test]
    fn every_vocabulary_prints_the_name_it_parses() {
        round_trips(ByteOrder::NAMES, ByteOrder::as_str);
        round_trips(EquipmentType::NAMES, EquipmentType::as_str);
        round_trips(FaultCategory::NAMES, FaultCategory::as_str);
        round_trips(Severity::NAMES, Severity::as_str);
        round_trips(DataType::MODBUS_NAMES, |d| d.modbus_name().unwrap());
        round_trips(DataType::LOGIX_NAMES, |d| d.logix_name().unwrap());
    }

    #[test]
    fn severities_are_named_from_low_to_critical() {
        // `AndonRules::raise_after_s` and `[equipment.andon.raise_after_s]` rely on this order.
        assert!(Severity::NAMES.windows(2).all(|w| w[0].1 < w[1].1));
        assert_eq!(Severity::NAMES.len(), 4);
    }

    #[test]
    fn display_is_the_config_name() {
        assert_eq!(Severity::Critical.to_string(), "critical");
        assert_eq!(FaultCategory::Safety.to_string(), "safety");
        assert_eq!(EquipmentType::Packaging.to_string(), "packaging");
        assert_eq!(ByteOrder::Cdab.to_string(), "CDAB");
    }

    #[test]
    fn every_data_type_has_a_name() {
        use DataType::*;
        for dt in [Bool, U16, I16, U32, I32, U64, I64, F32, F64, I8] {
            assert_ne!(dt.as_str(), "?");
            assert!(dt.name(false).is_some() || dt.name(true).is_some());
        }
        assert_eq!(I8.as_str(), "sint");
        assert_eq!(U32.logix_name(), None);
    }
}
