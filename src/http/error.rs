//! `application/problem+json` errors (RFC 7807) and the extractors whose
//! rejections are such problems.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answered as problem+json. 5xx details never show internals.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    /// Seconds for `Retry-After` (429; 503 always says 1).
    retry_after: Option<u64>,
    /// The command the problem is about (a command that was not, or may not have been, appended).
    command_id: Option<String>,
}

impl ApiError {
    /// A problem with no `Retry-After` (but a 503's) and no command.
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: String,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            title,
            detail,
            retry_after: None,
            command_id: None,
        }
    }

    /// 400: a parameter or body is wrong; `detail` names it and the rule.
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail.into(),
        )
    }

    /// 404: the resource does not exist.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            detail.into(),
        )
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not accept that method".into(),
        )
    }

    /// 405 with a reason.
    pub fn method_not_allowed_because(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            detail.into(),
        )
    }

    /// 409: the request conflicts with an earlier one (a command id reused for another request).
    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail.into())
    }

    /// The same problem, about command `id` (its answer carries the id).
    pub fn about_command(mut self, id: impl Into<String>) -> ApiError {
        self.command_id = Some(id.into());
        self
    }

    /// 503: the service cannot answer yet (catching up, or a wait timed out).
    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail.into(),
        )
    }

    /// 413: the body is larger than the limit.
    pub fn too_large(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            detail.into(),
        )
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail.into(),
        )
    }

    /// 410: what was asked for existed once and is gone (e.g. compacted changes).
    pub fn gone(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "gone", "Gone", detail.into())
    }

    /// 406: no representation the client accepts.
    pub fn not_acceptable(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "Not acceptable",
            detail.into(),
        )
    }

    /// 504: a read waited for `after` longer than `wait_ms`.
    pub fn timeout(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "Gateway timeout",
            detail.into(),
        )
    }

    /// 401: no API key, or not one this server knows.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.into(),
        )
    }

    /// 403: the key is known but may not do this (another tenant, or a
    /// right it does not hold).
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            detail.into(),
        )
    }

    /// 429: the key's request rate is over its limit; retry after `seconds`.
    pub fn too_many_requests(detail: impl Into<String>, seconds: u64) -> ApiError {
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
                detail.into(),
            )
        }
    }

    /// A rejection axum answered in plain text (a body over the limit, a
    /// connection-level problem), as a problem with the same status.
    pub fn from_rejection(status: StatusCode, text: &str) -> ApiError {
        let detail = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "body: larger than the {} bytes a request may have",
                super::MAX_BODY_BYTES
            ),
            _ => text.to_owned(),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
            s if s.is_client_error() => "bad-request",
            _ => "internal",
        };
        ApiError::new(status, kind, title, detail)
    }

    /// 500: logged in full here, answered without internals.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "internal error answering a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to answer; the error is in its logs".into(),
        )
    }

    /// What went wrong, as answered.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The body of every error (RFC 7807), as `application/problem+json`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://stockflow.dev/problems/<kind>`: bad-request, unauthorized, forbidden, not-found, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's name.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong, precisely: the parameter or field and the rule.
    pub detail: String,
    /// On a command's 503: its id, to retry it safely as `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("https://stockflow.dev/problems/{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
            command_id: self.command_id,
        };
        let body = serde_json::to_string(&body).expect("a problem serializes");
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        let retry_after = self
            .retry_after
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"stockflow\""),
            );
        }
        response
    }
}

/// Declares a set of problem answers for the OpenAPI document: the four any
/// `/v1` route may answer (400, 401, 403, 429), then the set's own.
macro_rules! problems {
    ($(#[doc = $doc:tt])* $name:ident { $($(#[doc = $variant_doc:tt])* $status:literal $variant:ident,)* }) => {
        $(#[doc = $doc])*
        #[derive(utoipa::IntoResponses)]
        #[allow(dead_code)] // Documentation only: the handlers answer ApiError.
        pub enum $name {
            /// A parameter or the body breaks a rule; the detail names it.
            #[response(status = 400, content_type = "application/problem+json")]
            BadRequest(Problem),
            /// No API key, or one the server does not know (auth on).
            #[response(status = 401, content_type = "application/problem+json")]
            Unauthorized(Problem),
            /// The key may not name this tenant, or lacks the right.
            #[response(status = 403, content_type = "application/problem+json")]
            Forbidden(Problem),
            /// The key is over its rate limit; `Retry-After` says when to retry.
            #[response(status = 429, content_type = "application/problem+json")]
            TooManyRequests(Problem),
            $(
                $(#[doc = $variant_doc])*
                #[response(status = $status, content_type = "application/problem+json")]
                $variant(Problem),
            )*
        }
    };
}

problems! {
    /// The problems a `/v1` read may answer (in the OpenAPI document).
    ReadProblems {
        /// `after` was not reached within `wait_ms`.
        504 Timeout,
    }
}

problems! {
    /// The problems a command may answer.
    CommandProblems {
        /// The server is read-only (`--read-only`): it takes no commands.
        405 ReadOnly,
        /// The command id (Idempotency-Key or command_id) was used by this server for another request; the detail names it.
        409 Conflict,
        /// The body is over 64 KiB.
        413 TooLarge,
        /// The body is not application/json.
        415 UnsupportedMediaType,
        /// The command was not appended, or its outcome is unknown (broker down, disk full): the problem's `command_id` is the Idempotency-Key to retry it with.
        503 Unavailable,
    }
}

problems! {
    /// The problems a change stream may answer.
    StreamProblems {
        /// `Accept` names neither text/event-stream nor application/x-ndjson.
        406 NotAcceptable,
        /// `from_epoch` is older than the retained changes: open a new stream.
        410 Gone,
        /// Change streams are off on this server (`changes_retention = 0`).
        503 Unavailable,
    }
}

problems! {
    /// The problems a webhook route may answer.
    WebhookProblems {
        /// Webhooks are off on this server.
        503 Unavailable,
    }
}

/// Query parameters whose rejection is a 400 problem naming the parameter.
/// Unknown parameters are rejected too: a typo is not silently ignored.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiError::bad_request(format!("query parameter {detail}")))
            }
        }
    }
}

/// One path segment, with a 400 problem when it cannot be read.
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Segment(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "path: {}",
                rejection.body_text()
            ))),
        }
    }
}
