//! How a topic is read: the format of its messages, where reading begins,
//! and the two together with the topic ([`SourceSpec`]).

use super::{Record, Source};
use std::sync::Arc;
use stockflow_dataflows::model::cqrs::decode_cqrs;
use stockflow_dataflows::model::tradex::decode_tradex;
use stockflow_dataflows::model::{decode_event, DecodeError, Event, RecordContext};

/// How the bytes of a topic's messages are read (see docs/formats.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
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
    /// Every format, in the order the docs list them.
    pub const ALL: [Format; 3] = [Format::Stockflow, Format::Tradex, Format::InventoryCqrs];

    /// Parses a format name as written in `--source TOPIC=FORMAT` or the config file.
    pub fn parse(name: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| format!("format `{name}` is not supported (supported: stockflow, tradex, inventory-cqrs)"))
    }

    /// The name [`Format::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Format::Stockflow => "stockflow",
            Format::Tradex => "tradex",
            Format::InventoryCqrs => "inventory-cqrs",
        }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
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
        match name {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            "stored" => Ok(Start::Stored),
            other => Err(format!(
                "start `{other}` is not one of earliest, latest, stored"
            )),
        }
    }
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
