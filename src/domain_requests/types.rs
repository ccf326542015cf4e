//! What domain requests answer and fail with: the agents' address check, a request as the
//! console shows it, the outcome of a decision, and the errors (with the form field at fault).

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Language;
use crate::mail::MailError;
use crate::policy::ReasonCode;
use crate::store::StoreError;
use crate::store::domain_requests::DomainRequestRow;

/// Why a domain request could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum DomainRequestError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A mail could not be rendered or built.
    #[error("{0}")]
    Mail(#[from] MailError),
    /// The address is not an email address.
    #[error("invalid email address: {0}")]
    InvalidAddress(String),
    /// A field is missing or unusable.
    #[error("`{field}`: {problem}")]
    InvalidField {
        /// The form field / JSON key.
        field: &'static str,
        /// What is wrong.
        problem: FieldProblem,
    },
    /// Requests are turned off (`web.domain_requests = false`).
    #[error("domain requests are turned off on this service")]
    Disabled,
    /// The policy already knows the address's domain (allowed, or refused by a rule).
    #[error("this address's domain is already known to the service: no request is needed")]
    NotNeeded,
    /// Too many requests from this client or for this domain.
    #[error("too many requests; retry later")]
    RateLimited {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// The confirmation link is unknown, wrong or expired.
    #[error("this confirmation link is unknown or has expired")]
    InvalidLink,
    /// No pending request for this domain.
    #[error("no pending request for the domain {0}")]
    NotFound(String),
    /// The domain cannot be accepted: no rule lets its addresses in yet.
    #[error(
        "no rule lets addresses at {0} in yet: create the domain rule first, then accept the requests"
    )]
    DomainNotAllowed(String),
}

/// What is wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldProblem {
    /// Empty or absent.
    Missing,
    /// Longer than allowed (characters).
    TooLong(usize),
    /// Holds control characters.
    ControlCharacters,
}

impl FieldProblem {
    /// A code for pages (`missing`, `too_long`, `control_characters`).
    pub fn code(self) -> &'static str {
        match self {
            FieldProblem::Missing => "missing",
            FieldProblem::TooLong(_) => "too_long",
            FieldProblem::ControlCharacters => "control_characters",
        }
    }
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldProblem::Missing => f.write_str("required"),
            FieldProblem::TooLong(max) => write!(f, "at most {max} characters"),
            FieldProblem::ControlCharacters => f.write_str("must not contain control characters"),
        }
    }
}

/// The answer to "which homeserver is mine?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressCheck {
    /// The address, normalised.
    pub address: String,
    /// Its domain (Unicode).
    pub domain: String,
    /// What the agent is told: `allowed`, `invite_required`, or why they are refused (the
    /// policy's `reason_code`).
    pub verdict: ReasonCode,
    /// Where to register (the public name of the homeserver); none when refused.
    pub homeserver: Option<String>,
    /// The organisation label.
    pub organisation: Option<String>,
    /// Whether the domain is unknown to the policy (its default decided).
    pub unknown_domain: bool,
    /// Whether the request form is offered (an unknown domain, requests on).
    pub may_request: bool,
    /// The Matrix web client to register with (`web.client_url`, for the homeserver).
    pub client_link: Option<String>,
}

/// A new request, as the form or the API gives it.
#[derive(Debug, Clone)]
pub struct NewDomainRequest {
    /// The requester's address.
    pub address: String,
    /// Their name.
    pub name: String,
    /// Their administration.
    pub organisation: String,
    /// An optional message to the administrators.
    pub message: Option<String>,
    /// The language of their mails.
    pub language: Language,
}

/// What became of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A confirmation mail is on its way.
    MailSent,
    /// This address's request for this domain is already in the queue.
    AlreadyPending,
}

/// A domain in the administrators' queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueuedDomain {
    /// The domain (IDNA ASCII).
    pub domain: String,
    /// How many people asked (confirmed requests).
    pub requesters: usize,
    /// The administrations they named, most named first.
    pub organisations: Vec<String>,
    /// The first request (ms).
    pub first_requested_at: i64,
    /// The latest request (ms).
    pub last_requested_at: i64,
}

/// One request, as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DomainRequestView {
    /// Its id.
    pub id: String,
    /// The domain.
    pub domain: String,
    /// The requester's address.
    pub address: String,
    /// Their name.
    pub name: String,
    /// Their administration.
    pub organisation: String,
    /// Their message.
    pub message: Option<String>,
    /// `pending`, `accepted` or `declined`.
    pub status: String,
    /// When it was made (ms).
    pub requested_at: i64,
    /// When it was decided (ms).
    pub decided_at: Option<i64>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The message sent with a refusal.
    pub decision_message: Option<String>,
}

impl DomainRequestView {
    pub(super) fn of(row: DomainRequestRow) -> DomainRequestView {
        DomainRequestView {
            id: row.id,
            domain: row.domain,
            address: row.address,
            name: row.name,
            organisation: row.organisation,
            message: row.message,
            status: row.status,
            requested_at: row.created_at,
            decided_at: row.decided_at,
            decided_by: row.decided_by,
            decision_message: row.decision_message,
        }
    }
}

/// What an accept or a decline did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Decided {
    /// The domain.
    pub domain: String,
    /// `accepted` or `declined`.
    pub status: String,
    /// Requesters told by mail.
    pub requesters_told: usize,
}
