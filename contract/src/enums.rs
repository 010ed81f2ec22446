//! The contract's closed vocabularies: validator types, MIME types, statuses and severities.
//! Spellings are the wire values of validibot-shared 0.28.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Implements `as_str`, `Display` and `FromStr` from one table of `Variant => "wire"` pairs.
macro_rules! wire_enum {
    ($name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of: {}",
                        stringify!($name),
                        [$($wire),+].join(", ")
                    )),
                }
            }
        }
    };
}

/// Which kind of validator runs (and so which typed `inputs`/`outputs` an envelope carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidatorType {
    /// Built-in basic checks.
    Basic,
    /// JSON Schema validation.
    JsonSchema,
    /// XML Schema validation.
    XmlSchema,
    /// Schematron rules.
    Schematron,
    /// SHACL shapes over RDF.
    Shacl,
    /// An EnergyPlus simulation.
    Energyplus,
    /// A Functional Mock-up Unit simulation.
    Fmu,
    /// A customer-provided validator image.
    CustomValidator,
    /// AI-assisted review.
    AiAssist,
    /// ENERGY STAR Portfolio Manager reports.
    PortfolioManager,
    /// PDF documents.
    Pdf,
}

wire_enum!(ValidatorType {
    Basic => "BASIC",
    JsonSchema => "JSON_SCHEMA",
    XmlSchema => "XML_SCHEMA",
    Schematron => "SCHEMATRON",
    Shacl => "SHACL",
    Energyplus => "ENERGYPLUS",
    Fmu => "FMU",
    CustomValidator => "CUSTOM_VALIDATOR",
    AiAssist => "AI_ASSIST",
    PortfolioManager => "PORTFOLIO_MANAGER",
    Pdf => "PDF",
});

/// The MIME types an input file may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum MimeType {
    /// `application/xml`
    #[serde(rename = "application/xml")]
    ApplicationXml,
    /// `text/xml`
    #[serde(rename = "text/xml")]
    TextXml,
    /// An EnergyPlus IDF model.
    #[serde(rename = "application/vnd.energyplus.idf")]
    EnergyPlusIdf,
    /// An EnergyPlus epJSON model.
    #[serde(rename = "application/vnd.energyplus.epjson")]
    EnergyPlusEpJson,
    /// EnergyPlus weather data.
    #[serde(rename = "application/vnd.energyplus.epw")]
    EnergyPlusEpw,
    /// A Functional Mock-up Unit.
    #[serde(rename = "application/vnd.fmi.fmu")]
    Fmu,
    /// RDF Turtle.
    #[serde(rename = "text/turtle")]
    RdfTurtle,
    /// RDF/XML.
    #[serde(rename = "application/rdf+xml")]
    RdfXml,
    /// JSON-LD.
    #[serde(rename = "application/ld+json")]
    RdfJsonLd,
    /// N-Triples.
    #[serde(rename = "application/n-triples")]
    RdfNTriples,
    /// N-Quads.
    #[serde(rename = "application/n-quads")]
    RdfNQuads,
    /// Excel (legacy).
    #[serde(rename = "application/vnd.ms-excel")]
    Xls,
    /// Excel (OOXML).
    #[serde(rename = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")]
    Xlsx,
    /// ZIP archive.
    #[serde(rename = "application/zip")]
    Zip,
    /// JSON.
    #[serde(rename = "application/json")]
    Json,
    /// PDF.
    #[serde(rename = "application/pdf")]
    Pdf,
    /// STEP CAD model.
    #[serde(rename = "model/step")]
    Step,
    /// ISO 10303-21 exchange file.
    #[serde(rename = "application/p21")]
    P21,
}

wire_enum!(MimeType {
    ApplicationXml => "application/xml",
    TextXml => "text/xml",
    EnergyPlusIdf => "application/vnd.energyplus.idf",
    EnergyPlusEpJson => "application/vnd.energyplus.epjson",
    EnergyPlusEpw => "application/vnd.energyplus.epw",
    Fmu => "application/vnd.fmi.fmu",
    RdfTurtle => "text/turtle",
    RdfXml => "application/rdf+xml",
    RdfJsonLd => "application/ld+json",
    RdfNTriples => "application/n-triples",
    RdfNQuads => "application/n-quads",
    Xls => "application/vnd.ms-excel",
    Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    Zip => "application/zip",
    Json => "application/json",
    Pdf => "application/pdf",
    Step => "model/step",
    P21 => "application/p21",
});

/// How a validator run ended, as its output envelope and callback report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationStatus {
    /// Ran and found nothing blocking.
    Success,
    /// Ran and found errors in the submission (the user's fault; not retried).
    FailedValidation,
    /// The validator itself failed (a system fault).
    FailedRuntime,
    /// Cancelled by a user or the system.
    Cancelled,
}

wire_enum!(ValidationStatus {
    Success => "success",
    FailedValidation => "failed_validation",
    FailedRuntime => "failed_runtime",
    Cancelled => "cancelled",
});

/// How serious a validation message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Informational.
    Info,
    /// Worth a look; does not fail the run.
    Warning,
    /// A finding that fails validation.
    Error,
}

wire_enum!(Severity {
    Info => "INFO",
    Warning => "WARNING",
    Error => "ERROR",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_agree() {
        for t in ValidatorType::ALL {
            assert_eq!(serde_json::to_value(t).expect("ser"), t.as_str());
        }
        for m in MimeType::ALL {
            assert_eq!(serde_json::to_value(m).expect("ser"), m.as_str());
            assert_eq!(m.as_str().parse::<MimeType>().as_ref(), Ok(m));
        }
        for s in ValidationStatus::ALL {
            assert_eq!(serde_json::to_value(s).expect("ser"), s.as_str());
        }
        for s in Severity::ALL {
            assert_eq!(serde_json::to_value(s).expect("ser"), s.as_str());
        }
        assert!("bogus".parse::<ValidatorType>().is_err());
    }
}
