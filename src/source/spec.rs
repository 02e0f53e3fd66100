//! How a topic is read: the format of its messages, where reading begins,
//! and the two together with the topic ([`SourceSpec`]).

use super::{Record, Source};
use std::sync::Arc;
use stockflow_dataflows::model::cqrs::decode_cqrs;
use stockflow_dataflows::model::tradex::decode_tradex;
use stockflow_dataflows::model::{decode_event, DecodeError, Event, RecordContext};

/// How the bytes of a topic's messages are read (see docs/formats.md).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Format {
    /// stockflow's own JSON events (docs/formats.md, `stockflow`).
    #[default]
    Stockflow,
    /// The Latam Tradex topics (`order.created`, `order.updated`, `stock.updated`, `user.registered`).
    Tradex,
    /// The `inventory.items` / `inventory.stock` topics of the command/query/listener design.
    InventoryCqrs,
}

impl Format {
    /// Parses a format name as written in `--source TOPIC=FORMAT` or the config file.
    pub fn parse(name: &str) -> Result<Format, String> {
        name.parse().map_err(|_| {
            format!(
                "format `{name}` is not supported (supported: {})",
                names::<Format>()
            )
        })
    }

    /// The name [`Format::parse`] reads.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Decodes one message of `topic`/`partition` into the events it means (zero or more).
    pub fn decode(
        self,
        topic: &str,
        partition: u32,
        record: &Record,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let ctx = RecordContext {
            offset: record.offset,
            log_time: Some(record.timestamp_ms),
        };
        match self {
            Format::Stockflow => out.push(decode_event(&record.payload, ctx)?),
            Format::Tradex => out.extend(decode_tradex(topic, partition, &record.payload, ctx)?),
            Format::InventoryCqrs => out.extend(decode_cqrs(topic, &record.payload, ctx)?),
        }
        Ok(())
    }
}

/// Where reading a topic begins when the engine starts.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Start {
    /// The first message still in the log: the views cover the whole topic.
    #[default]
    Earliest,
    /// The end of the log at start-up: the views cover only what arrives after.
    Latest,
    /// The offsets last committed under the Kafka group id (where a previous
    /// run's published views had got to); `earliest` where none is stored.
    Stored,
}

impl Start {
    /// Parses `earliest`, `latest` or `stored`.
    pub fn parse(name: &str) -> Result<Start, String> {
        name.parse()
            .map_err(|_| format!("start `{name}` is not one of {}", names::<Start>()))
    }
}

/// The names of every variant of `T`, comma-separated, for error messages.
pub fn names<T: strum::VariantArray + Copy + Into<&'static str>>() -> String {
    T::VARIANTS
        .iter()
        .map(|variant| (*variant).into())
        .collect::<Vec<&str>>()
        .join(", ")
}

/// A topic to read and how to read it.
#[derive(Clone)]
pub struct SourceSpec {
    /// The topic.
    pub source: Arc<dyn Source>,
    /// Its message format.
    pub format: Format,
    /// Where to begin.
    pub start: Start,
}
