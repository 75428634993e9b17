//! The authorization policy from its protocol form (`trellis.config.v1.AuthorizationPolicy`, part
//! of `InboundConfig`), validated. Errors name the field, so that the NACK says what is wrong.

use super::{
    Action, HeaderRule, HeaderRuleValue, IdentityMatch, PathRule, Policy, Rule, Source, Target,
};
use http::{HeaderName, Method};
use trellis_api::config as pb;

/// Decodes `authorization` (absent means allow-all).
pub fn decode_policy(msg: Option<pb::AuthorizationPolicy>) -> Result<Policy, String> {
    let Some(msg) = msg else {
        return Ok(Policy::default());
    };
    let default = action(msg.default_action, "authorization.default_action")?;
    let mut rules = Vec::with_capacity(msg.rules.len());
    for (i, r) in msg.rules.into_iter().enumerate() {
        let at = format!("authorization.rules[{i}]");
        if r.name.is_empty() {
            return Err(format!("{at}.name: a rule needs a name"));
        }
        if r.name == super::DEFAULT_RULE {
            return Err(format!(
                "{at}.name: {:?} names the policy's default action",
                r.name
            ));
        }
        if rules.iter().any(|x: &Rule| x.name == r.name) {
            return Err(format!("{at}.name: {:?} is used twice", r.name));
        }
        let from = r.from.unwrap_or_default();
        let to = r.to.unwrap_or_default();
        rules.push(Rule {
            name: r.name,
            action: action(r.action, &format!("{at}.action"))?,
            from: Source {
                identities: from
                    .identities
                    .iter()
                    .map(|p| IdentityMatch::parse(p))
                    .collect(),
                namespaces: from.namespaces,
                unauthenticated: from.unauthenticated,
            },
            to: target(to, &format!("{at}.to"))?,
        });
    }
    Ok(Policy { default, rules })
}

fn action(value: i32, field: &str) -> Result<Action, String> {
    match pb::AuthzAction::try_from(value) {
        Ok(pb::AuthzAction::Unspecified | pb::AuthzAction::Allow) => Ok(Action::Allow),
        Ok(pb::AuthzAction::Deny) => Ok(Action::Deny),
        Err(_) => Err(format!("{field}: unknown value {value}")),
    }
}

fn target(to: pb::AuthzTarget, at: &str) -> Result<Target, String> {
    let ports = to
        .ports
        .iter()
        .map(|p| match u16::try_from(*p) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(format!("{at}.ports: {p} is not a port")),
        })
        .collect::<Result<_, _>>()?;
    let paths = to
        .paths
        .into_iter()
        .enumerate()
        .map(|(i, p)| match p.kind {
            Some(pb::authz_path::Kind::Exact(e)) => Ok(PathRule::Exact(e)),
            Some(pb::authz_path::Kind::Prefix(p)) => Ok(PathRule::Prefix(p)),
            None => Err(format!("{at}.paths[{i}]: give exact or prefix")),
        })
        .collect::<Result<_, _>>()?;
    let methods = to
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("{at}.methods: {m:?} is not a method"))
        })
        .collect::<Result<_, _>>()?;
    let mut headers = Vec::with_capacity(to.headers.len());
    for (i, h) in to.headers.into_iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{at}.headers[{i}].name: {:?} is not a header name", h.name))?;
        let value = match h.value {
            Some(pb::header_match::Value::Exact(v)) => HeaderRuleValue::Exact(v),
            Some(pb::header_match::Value::Prefix(v)) => HeaderRuleValue::Prefix(v),
            Some(pb::header_match::Value::Present(p)) => HeaderRuleValue::Present(p),
            None => HeaderRuleValue::Present(true),
            Some(pb::header_match::Value::Regex(_)) => {
                return Err(format!(
                    "{at}.headers[{i}]: regex is not supported in authorization rules"
                ))
            }
        };
        headers.push(HeaderRule { name, value });
    }
    Ok(Target {
        ports,
        paths,
        methods,
        headers,
    })
}
