//! What the backend checks of a token's `resource.url` at verify (wire-spec §4, §6.2):
//! it must name the resource the route asks for (`BCK.X402.0013`: origin and path
//! compared, query ignored, literal compare when not an absolute URL), and, when the
//! agent registered endpoints, one of them (`BCK.PROTOCOL.0031`). Tokens without a
//! `resource.url` skip both, as on the platform.

use http::{StatusCode, Uri};

use super::error::ApiError;
use crate::types::Endpoint;

/// The token's resource against the route's.
pub(crate) fn same_resource(token_url: &str, required_url: &str) -> Result<(), ApiError> {
    let same = match (origin_and_path(token_url), origin_and_path(required_url)) {
        (Some(a), Some(b)) => a == b,
        _ => token_url.trim() == required_url.trim(),
    };
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BCK.X402.0013",
            format!(
                "The token's resource.url `{token_url}` does not match paymentRequired.resource.url `{required_url}`"
            ),
        ))
    }
}

/// The token's resource and verb against the agent's endpoint allow-list (empty: any).
pub(crate) fn allowed_endpoint(
    endpoints: &[Endpoint],
    url: &str,
    verb: Option<&str>,
) -> Result<(), ApiError> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let matches = |e: &Endpoint| {
        verb.is_none_or(|v| v.eq_ignore_ascii_case(&e.verb)) && url_matches(&e.url, url)
    };
    if endpoints.iter().any(matches) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BCK.PROTOCOL.0031",
            format!(
                "{} {url} is not one of the agent's endpoints",
                verb.unwrap_or("*")
            ),
        ))
    }
}

/// `scheme://authority` (lower-cased) and the path of an absolute URL.
fn origin_and_path(url: &str) -> Option<(String, String)> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    Some((format!("{scheme}://{authority}"), uri.path().to_owned()))
}

/// A pattern with `:param` segments against a URL: same origin when both have one,
/// then segment by segment; the query is ignored.
fn url_matches(pattern: &str, url: &str) -> bool {
    let split = |u: &str| -> (Option<String>, String) {
        match origin_and_path(u) {
            Some((origin, path)) => (Some(origin), path),
            None => (None, u.split('?').next().unwrap_or_default().to_owned()),
        }
    };
    let (p_origin, p_path) = split(pattern);
    let (u_origin, u_path) = split(url);
    if let (Some(a), Some(b)) = (&p_origin, &u_origin) {
        if a != b {
            return false;
        }
    }
    let p: Vec<&str> = p_path.trim_end_matches('/').split('/').collect();
    let u: Vec<&str> = u_path.trim_end_matches('/').split('/').collect();
    p.len() == u.len()
        && p.iter()
            .zip(&u)
            .all(|(p, u)| (p.starts_with(':') && !u.is_empty()) || p == u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_compare_ignores_the_query_and_case_of_the_origin() {
        assert!(same_resource("https://A.example/ask?x=1", "https://a.example/ask").is_ok());
        assert!(same_resource("https://a.example/ask", "https://a.example/other").is_err());
        assert!(same_resource("https://a.example/ask", "https://b.example/ask").is_err());
        assert!(same_resource("/ask", "/ask").is_ok());
        assert_eq!(
            same_resource("/ask?x", "/ask").unwrap_err().code,
            "BCK.X402.0013"
        );
    }

    #[test]
    fn endpoints_match_verb_origin_and_params() {
        let eps = vec![Endpoint::new(
            "post",
            "https://a.example/agents/:agentId/tasks",
        )];
        assert!(
            allowed_endpoint(&eps, "https://a.example/agents/7/tasks?q=1", Some("POST")).is_ok()
        );
        assert!(allowed_endpoint(&eps, "https://a.example/agents/7/tasks", None).is_ok());
        let refused = allowed_endpoint(&eps, "https://a.example/agents/7/tasks", Some("GET"));
        assert_eq!(refused.unwrap_err().code, "BCK.PROTOCOL.0031");
        assert!(allowed_endpoint(&eps, "https://b.example/agents/7/tasks", Some("POST")).is_err());
        assert!(allowed_endpoint(&eps, "https://a.example/agents/7", Some("POST")).is_err());
        assert!(allowed_endpoint(&[], "https://anything", Some("GET")).is_ok());
    }
}
