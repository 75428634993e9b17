//! The repository's Dockerfile as data, for `images.rs` (do the manifests name what it builds?)
//! and `static_binary.rs` (build and lay out the proxy as the image does): its stages with their
//! instructions, and the documented `docker build --target STAGE -t IMAGE .` commands of its
//! header. Only the Dockerfile syntax the file uses: comments, `\` continuations, `FROM x AS y`,
//! exec-form or shell-form arguments kept as text.

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// The repository's Dockerfile, parsed.
pub fn load() -> Dockerfile {
    let path = workspace_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    Dockerfile::parse(&text)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper case: `RUN`, `COPY`, ...
    pub keyword: String,
    /// The rest, continuations joined with a space.
    pub args: String,
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// The `FROM` image.
    pub from: String,
    /// The `AS` name.
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// `COPY [--from=STAGE] SRC DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: Option<String>,
    pub src: String,
    pub dest: String,
}

/// One documented build: `docker build … --target STAGE -t IMAGE .`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The whole command as written.
    pub command: String,
    pub target: String,
    pub image: String,
}

#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
    pub builds: Vec<Build>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Dockerfile {
        let mut stages: Vec<Stage> = Vec::new();
        let mut builds = Vec::new();
        let mut pending = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if pending.is_empty() {
                if let Some(comment) = trimmed.strip_prefix('#') {
                    if let Some(build) = parse_build(comment.trim()) {
                        builds.push(build);
                    }
                    continue;
                }
                if trimmed.is_empty() {
                    continue;
                }
            } else if trimmed.starts_with('#') {
                continue; // a comment inside a continued instruction
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    pending.push_str(part.trim());
                    pending.push(' ');
                }
                None => {
                    pending.push_str(trimmed);
                    let whole = std::mem::take(&mut pending);
                    let (keyword, args) = whole
                        .split_once(char::is_whitespace)
                        .unwrap_or((&whole, ""));
                    let instruction = Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_string(),
                    };
                    if instruction.keyword == "FROM" {
                        let words: Vec<&str> = instruction.args.split_whitespace().collect();
                        let name = match words.as_slice() {
                            [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                                Some(name.to_string())
                            }
                            [_] => None,
                            _ => panic!("unexpected FROM: {}", instruction.args),
                        };
                        stages.push(Stage {
                            from: words[0].to_string(),
                            name,
                            instructions: Vec::new(),
                        });
                    } else {
                        stages
                            .last_mut()
                            .unwrap_or_else(|| panic!("{keyword} before the first FROM"))
                            .instructions
                            .push(instruction);
                    }
                }
            }
        }
        assert!(
            pending.is_empty(),
            "the Dockerfile ends inside a continuation"
        );
        Dockerfile { stages, builds }
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// The documented build producing `image`.
    pub fn build_of(&self, image: &str) -> Option<&Build> {
        self.builds.iter().find(|b| b.image == image)
    }
}

/// `docker build [flags] --target STAGE [flags] -t IMAGE [flags] .`
fn parse_build(line: &str) -> Option<Build> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.get(..2) != Some(&["docker", "build"][..]) {
        return None;
    }
    let value = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
    };
    Some(Build {
        command: line.to_string(),
        target: value("--target")?,
        image: value("-t").or_else(|| value("--tag"))?,
    })
}

impl Stage {
    pub fn all(&self, keyword: &str) -> impl Iterator<Item = &str> + '_ {
        let keyword = keyword.to_string();
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    /// The last `ENV NAME=value` (quotes removed).
    pub fn env(&self, name: &str) -> Option<String> {
        self.all("ENV")
            .filter_map(|args| {
                let (key, value) = args.split_once('=')?;
                (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
            })
            .last()
    }

    /// `USER uid[:gid]`, numeric.
    pub fn user(&self) -> Option<(u32, Option<u32>)> {
        let user = self.all("USER").last()?;
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        Some((
            uid.parse()
                .unwrap_or_else(|_| panic!("USER {user} is not numeric")),
            gid.map(|g| {
                g.parse()
                    .unwrap_or_else(|_| panic!("USER {user} is not numeric"))
            }),
        ))
    }

    pub fn copies(&self) -> Vec<Copy> {
        self.all("COPY")
            .map(|args| {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (from, rest) = match words.split_first() {
                    Some((first, rest)) if first.starts_with("--from=") => {
                        (Some(first["--from=".len()..].to_string()), rest)
                    }
                    _ => (None, &words[..]),
                };
                let [src, dest] = rest else {
                    panic!("COPY with other than one source: {args}");
                };
                Copy {
                    from,
                    src: src.to_string(),
                    dest: dest.to_string(),
                }
            })
            .collect()
    }

    /// Where the stage installs the executable `name`: the destination of a COPY whose last path
    /// component is `name`.
    pub fn installed(&self, name: &str) -> Option<Copy> {
        self.copies()
            .into_iter()
            .find(|c| c.dest.rsplit('/').next() == Some(name))
    }

    /// The `PATH` directories of the stage.
    pub fn path(&self) -> Vec<String> {
        self.env("PATH")
            .map(|p| p.split(':').map(str::to_string).collect())
            .unwrap_or_default()
    }
}
