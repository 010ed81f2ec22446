//! Runway's wire contract with validator containers: Validibot's validator-container contract
//! as of validibot-shared 0.28 (input envelope `validibot.input.v1`, output envelope
//! `validibot.output.v1`, attempt contract `validibot.attempt.v2`, and the callback payload).
//!
//! Pure serde, no I/O. Every type parses only what the Validibot Pydantic models accept, with
//! errors that name the offending field; every type serializes exactly the contract's fields
//! (the models forbid unknown ones). [`InputEnvelope::canonical_sha256`] is the
//! `input_envelope_sha256` binding, equal to validibot-shared's for the same envelope.
//!
//! The test suite checks all of this against validibot-shared itself (`tests/conformance.rs`).

pub mod canonical;
pub mod energyplus;
pub mod enums;
mod error;
pub mod fmu;
pub mod input;
pub mod output;
pub mod shape;
pub mod values;

pub use enums::{MimeType, Severity, ValidationStatus, ValidatorType};
pub use error::ContractError;
pub use input::{
    AttemptContractVersion, ExecutionContext, InputEnvelope, InputFileItem, InputSchemaVersion,
    OrganizationInfo, OutputSchemaVersion, ResourceFileItem, ValidatorInfo, ValidatorInputs,
    WorkflowInfo,
};
pub use output::{
    CallbackPayload, MessageLocation, MetricValue, OutputEnvelope, RawOutputs, ValidationArtifact,
    ValidationMessage, ValidationMetric, ValidationTiming, ValidatorOutputs,
};
pub use values::{
    CallbackNonce, HttpUrl, NonEmpty, NonNegative, PortKey, SafeName, Sha256Hex, StorageUri,
    StorageVersion,
};
