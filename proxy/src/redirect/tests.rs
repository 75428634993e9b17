//! Plans checked as data, and run against `FakeTables`, a small in-memory model of the nat table
//! that answers `-L -N -F -X -A -C -D` the way iptables does.

use super::exec::{run, Runner};
use super::plan::*;
use super::*;
use std::collections::BTreeMap;

type Chains = BTreeMap<String, Vec<Vec<String>>>;

#[derive(Debug, Clone, PartialEq)]
struct FakeTables {
    tables: BTreeMap<&'static str, Chains>,
    /// The rule some other software put there, which we must leave alone.
    log: Vec<String>,
}

impl FakeTables {
    fn new() -> Self {
        let mut base = Chains::new();
        for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            base.insert(c.to_string(), Vec::new());
        }
        base.get_mut("OUTPUT")
            .unwrap()
            .push(vec!["-j".into(), "SOMEONE_ELSE".into()]);
        base.insert("SOMEONE_ELSE".into(), Vec::new());
        let tables = [("iptables", base.clone()), ("ip6tables", base)].into();
        FakeTables {
            tables,
            log: Vec::new(),
        }
    }
    fn chains(&self, f: Family) -> &Chains {
        &self.tables[f.binary()]
    }
}

impl Runner for FakeTables {
    fn run(&mut self, family: Family, args: &[String]) -> Result<(), String> {
        self.log
            .push(format!("{} {}", family.binary(), args.join(" ")));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let chains = self.tables.get_mut(family.binary()).unwrap();
        let referenced = |chains: &Chains, name: &str| {
            chains
                .values()
                .flatten()
                .any(|r| r.last().map(String::as_str) == Some(name))
        };
        let rule = |rest: &[&str]| rest.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match a.as_slice() {
            ["-t", "nat", "-n", "-L", c] => chains.contains_key(*c).then_some(()).ok_or("no chain"),
            ["-t", "nat", "-N", c] => match chains.insert(c.to_string(), Vec::new()) {
                Some(_) => Err("chain already exists"),
                None => Ok(()),
            },
            ["-t", "nat", "-F", c] => chains.get_mut(*c).map(Vec::clear).ok_or("no chain"),
            ["-t", "nat", "-X", c] => {
                if referenced(chains, c) || chains.get(*c).is_some_and(|r| !r.is_empty()) {
                    return Err("chain in use".into());
                }
                chains.remove(*c).map(drop).ok_or("no chain")
            }
            ["-t", "nat", "-A", c, rest @ ..] => {
                let target = rest.last().copied().unwrap_or("");
                if target.starts_with("TRELLIS") && !chains.contains_key(target) {
                    return Err("no such target".into());
                }
                chains
                    .get_mut(*c)
                    .map(|r| r.push(rule(rest)))
                    .ok_or("no chain")
            }
            ["-t", "nat", "-C", c, rest @ ..] => chains
                .get(*c)
                .filter(|r| r.contains(&rule(rest)))
                .map(drop)
                .ok_or("no such rule"),
            ["-t", "nat", "-D", c, rest @ ..] => {
                let rules = chains.get_mut(*c).ok_or("no chain")?;
                let i = rules.iter().position(|r| *r == rule(rest));
                i.map(|i| drop(rules.remove(i))).ok_or("no such rule")
            }
            _ => Err("unexpected command"),
        }
        .map_err(|e: &str| e.to_string())
    }
}

fn spec() -> RedirectSpec {
    RedirectSpec {
        proxy_uid: 2102,
        inbound_port: 4143,
        outbound_port: 4140,
        skip_inbound_ports: parse_ports("x", "4191,9000-9010").unwrap(),
        skip_outbound_ports: parse_ports("x", "25").unwrap(),
        skip_outbound_cidrs: parse_cidrs("x", "10.96.0.0/12, fd00::/8").unwrap(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn inbound_excludes_own_and_skipped_ports_before_redirecting() {
    let rules = inbound_rules(&spec());
    assert_eq!(rules.first().unwrap(), &s(&["-i", "lo", "-j", "RETURN"]));
    let returns: Vec<_> = rules
        .iter()
        .filter(|r| r.ends_with(&s(&["RETURN"])))
        .collect();
    let ports: Vec<_> = returns.iter().skip(1).filter_map(|r| r.get(3)).collect();
    assert_eq!(ports, ["4143", "4140", "4191", "9000:9010"]);
    assert_eq!(
        rules.last().unwrap(),
        &s(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", "4143"])
    );
}

#[test]
fn outbound_sends_the_proxys_own_pod_calls_to_its_inbound_port_first() {
    let v4 = outbound_rules(&spec(), Family::V4);
    let own = |tail: &[&str]| {
        let mut r = s(&["-o", "lo", "!", "-d", "127.0.0.0/8", "-m", "owner"]);
        r.extend(s(&["--uid-owner", "2102", "-p", "tcp"]));
        r.extend(s(tail));
        r
    };
    assert_eq!(v4[0], own(&["--dport", "4143", "-j", "RETURN"]));
    assert_eq!(v4[1], own(&["--dport", "4140", "-j", "RETURN"]));
    assert_eq!(v4[2], own(&["--dport", "4191", "-j", "RETURN"]));
    assert_eq!(v4[3], own(&["--dport", "9000:9010", "-j", "RETURN"]));
    assert_eq!(v4[4], own(&["-j", "REDIRECT", "--to-ports", "4143"]));
    let v6 = outbound_rules(&spec(), Family::V6);
    assert_eq!(v6[4][4], "::1/128", "{:?}", v6[4]);
}

#[test]
fn outbound_excludes_proxy_uid_first_then_loopback_cidrs_ports() {
    let v4 = outbound_rules(&spec(), Family::V4);
    let v4 = &v4[5..];
    assert_eq!(
        v4[0],
        s(&["-m", "owner", "--uid-owner", "2102", "-j", "RETURN"])
    );
    assert_eq!(v4[1], s(&["-o", "lo", "-j", "RETURN"]));
    assert_eq!(v4[2], s(&["-d", "10.96.0.0/12", "-j", "RETURN"]));
    assert_eq!(v4[3], s(&["-p", "tcp", "--dport", "25", "-j", "RETURN"]));
    assert_eq!(
        v4[4],
        s(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", "4140"])
    );
    assert_eq!(v4.len(), 5);
    let v6 = outbound_rules(&spec(), Family::V6);
    assert!(v6.contains(&s(&["-d", "fd00::/8", "-j", "RETURN"])));
    assert!(!v6.iter().any(|r| r.contains(&"10.96.0.0/12".to_string())));
}

#[test]
fn install_builds_chains_before_jumping_into_them() {
    let steps = install(&spec(), &[Family::V4]);
    let jump = steps
        .iter()
        .position(|s| matches!(&s.op, Op::UnlessOk { then, .. } if then.contains(&"PREROUTING".to_string())))
        .unwrap();
    let last_append = steps
        .iter()
        .rposition(|s| matches!(&s.op, Op::Run(a) if a[2] == "-A"))
        .unwrap();
    assert!(last_append < jump);
}

#[test]
fn install_is_idempotent_and_leaves_other_rules_alone() {
    let mut t = FakeTables::new();
    let families = [Family::V4, Family::V6];
    run(&install(&spec(), &families), &mut t).unwrap();
    let once = t.tables.clone();
    assert_eq!(once["iptables"]["TRELLIS_INBOUND"].len(), 6);
    assert_eq!(
        once["iptables"]["PREROUTING"],
        vec![s(&["-p", "tcp", "-j", "TRELLIS_INBOUND"])]
    );
    run(&install(&spec(), &families), &mut t).unwrap();
    assert_eq!(t.tables, once, "a second run changes nothing");
    assert_eq!(t.chains(Family::V6)["OUTPUT"].len(), 2, "one jump, not two");

    // A changed spec rebuilds the chains in place.
    let mut changed = spec();
    changed.skip_outbound_ports.clear();
    run(&install(&changed, &families), &mut t).unwrap();
    assert_eq!(t.chains(Family::V4)["TRELLIS_OUTBOUND"].len(), 4 + 5);
    assert_eq!(t.chains(Family::V4)["OUTPUT"].len(), 2);
}

#[test]
fn cleanup_removes_exactly_what_install_added() {
    let pristine = FakeTables::new();
    let mut t = pristine.clone();
    let families = [Family::V4, Family::V6];
    run(&install(&spec(), &families), &mut t).unwrap();
    run(&cleanup(&families), &mut t).unwrap();
    assert_eq!(t.tables, pristine.tables);
    // Twice, and on a namespace that never had the rules: nothing to do, no error.
    run(&cleanup(&families), &mut t).unwrap();
    assert_eq!(t.tables, pristine.tables);
}

#[test]
fn a_failing_command_is_named() {
    struct Refuse;
    impl Runner for Refuse {
        fn run(&mut self, _: Family, args: &[String]) -> Result<(), String> {
            match args.get(2).map(String::as_str) {
                Some("-A") => Err("iptables: No chain/target/match by that name.".into()),
                _ => Ok(()),
            }
        }
    }
    let err = run(&install(&spec(), &[Family::V4]), &mut Refuse).unwrap_err();
    assert_eq!(
        err.command,
        "iptables -t nat -A TRELLIS_INBOUND -i lo -j RETURN"
    );
    assert!(err.to_string().contains("No chain/target"), "{err}");
}

#[test]
fn dry_run_lines_are_shell() {
    let steps = install(&spec(), &[Family::V4]);
    let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        text[0],
        "iptables -t nat -n -L TRELLIS_INBOUND 2>/dev/null || iptables -t nat -N TRELLIS_INBOUND"
    );
    assert!(text.contains(
        &"iptables -t nat -A TRELLIS_OUTBOUND -m owner --uid-owner 2102 -j RETURN".to_string()
    ));
    let cleanup: Vec<String> = cleanup(&[Family::V6])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        cleanup[0],
        "ip6tables -t nat -C PREROUTING -p tcp -j TRELLIS_INBOUND 2>/dev/null && ip6tables -t nat -D PREROUTING -p tcp -j TRELLIS_INBOUND"
    );
}

#[test]
fn flags_are_parsed_and_checked() {
    assert_eq!(
        parse_ports("--skip-inbound-ports", "80, 8000-8100,").unwrap(),
        vec![
            PortRange {
                first: 80,
                last: 80
            },
            PortRange {
                first: 8000,
                last: 8100
            }
        ]
    );
    for bad in ["0", "70000", "9-3", "http", "1-"] {
        assert!(parse_ports("--skip-inbound-ports", bad).is_err(), "{bad}");
    }
    let cidrs = parse_cidrs("--skip-outbound-cidrs", "10.0.0.0/8,::1,192.168.1.1").unwrap();
    let texts: Vec<_> = cidrs.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["10.0.0.0/8", "::1/128", "192.168.1.1/32"]);
    assert_eq!(cidrs[1].family, Family::V6);
    for bad in ["10.0.0.0/33", "nope/8", "::/129"] {
        let err = parse_cidrs("--skip-outbound-cidrs", bad).unwrap_err();
        assert!(err.to_string().contains("--skip-outbound-cidrs"), "{err}");
    }
}
