//! Kernel image definitions and aliases in the config store:
//! `images/{name}/{cpu,mem,gpu,runner,command}`, `images/{name}/tags/{tag}` and
//! `images/_aliases/{alias}`.

use std::collections::{BTreeMap, HashMap};

use protocol::ImageSpec;
use serde::Deserialize;

use crate::error::{ApiError, Error, Problem};
use crate::stores::mirror::{self, ConfigMirror, Entries};
use crate::stores::ConfigStore;

/// The image definitions shipped in `fixtures/`, loaded into an empty embedded store.
pub const BUILTIN_IMAGES: &str = include_str!("../fixtures/images.toml");
/// The aliases shipped in `fixtures/`.
pub const BUILTIN_ALIASES: &str = include_str!("../fixtures/aliases.toml");

/// An images file: `[[images]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesFile {
    /// The images.
    pub images: Vec<ImageDefinition>,
}

/// One kernel image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDefinition {
    /// Its name, e.g. `python3`.
    pub name: String,
    /// How the agent drives it: `python` or `shell`.
    pub runner: String,
    /// The interpreter the process runtime starts.
    pub command: String,
    /// CPU cores a session needs.
    pub cpu: f64,
    /// Memory a session needs, in MiB.
    pub mem: i64,
    /// GPUs a session needs.
    #[serde(default)]
    pub gpu: f64,
    /// Its tags; the first is the default when `latest` is absent.
    pub tags: Vec<String>,
}

/// An aliases file: `[aliases]` mapping an alias to `name` or `name:tag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasesFile {
    /// Alias to target.
    pub aliases: BTreeMap<String, String>,
}

/// Whether `name` may name an image, tag or alias (never `_`-prefixed, which the
/// store reserves for `_aliases`).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('_') && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// Parses an images file into config-store pairs.
pub fn image_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let file: ImagesFile = toml::from_str(text).map_err(|e| format!("malformed images file: {e}"))?;
    let mut pairs = Vec::new();
    for image in file.images {
        if !valid_name(&image.name) || image.name.contains(':') {
            return Err(format!("invalid image name {:?}", image.name));
        }
        if image.tags.is_empty() || !image.tags.iter().all(|t| valid_name(t) && !t.contains(':')) {
            return Err(format!("image {:?} needs valid tags", image.name));
        }
        if !(image.cpu > 0.0 && image.mem > 0 && image.gpu >= 0.0) {
            return Err(format!("image {:?} needs positive cpu and mem", image.name));
        }
        let base = format!("images/{}", image.name);
        pairs.push((format!("{base}/cpu"), image.cpu.to_string()));
        pairs.push((format!("{base}/mem"), image.mem.to_string()));
        pairs.push((format!("{base}/gpu"), image.gpu.to_string()));
        pairs.push((format!("{base}/runner"), image.runner.clone()));
        pairs.push((format!("{base}/command"), image.command.clone()));
        for tag in &image.tags {
            pairs.push((format!("{base}/tags/{tag}"), format!("{}:{tag}", image.name)));
        }
    }
    Ok(pairs)
}

/// Parses an aliases file into config-store pairs.
pub fn alias_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let file: AliasesFile = toml::from_str(text).map_err(|e| format!("malformed aliases file: {e}"))?;
    file.aliases
        .into_iter()
        .map(|(alias, target)| {
            if valid_name(&alias) && valid_name(&target) {
                Ok((format!("images/_aliases/{alias}"), target))
            } else {
                Err(format!("invalid alias {alias:?} -> {target:?}"))
            }
        })
        .collect()
}

/// Loads the shipped images and aliases into a store that has none.
pub async fn seed_builtin(store: &dyn ConfigStore) -> Result<bool, Error> {
    if !store.get_prefix("images/").await?.is_empty() {
        return Ok(false);
    }
    let mut pairs = image_pairs(BUILTIN_IMAGES).map_err(Error::ConfigStore)?;
    pairs.extend(alias_pairs(BUILTIN_ALIASES).map_err(Error::ConfigStore)?);
    store.put_many(&pairs).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_parse() {
        let images = image_pairs(BUILTIN_IMAGES).unwrap_or_else(|e| panic!("{e}"));
        assert!(images.contains(&("images/python3/runner".into(), "python".into())));
        assert!(images.contains(&("images/bash/tags/latest".into(), "bash:latest".into())));
        let aliases = alias_pairs(BUILTIN_ALIASES).unwrap_or_else(|e| panic!("{e}"));
        for alias in ["python", "python3", "python:3", "sh"] {
            assert!(aliases.iter().any(|(k, _)| k == &format!("images/_aliases/{alias}")), "{alias}");
        }
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(image_pairs(
            "[[images]]\nname = \"../x\"\nrunner=\"python\"\ncommand=\"python3\"\ncpu=1\nmem=1\ntags=[\"latest\"]"
        )
        .is_err());
        assert!(image_pairs(
            "[[images]]\nname = \"x\"\nrunner=\"python\"\ncommand=\"python3\"\ncpu=0\nmem=1\ntags=[\"latest\"]"
        )
        .is_err());
        assert!(image_pairs("[[images]]\nname = \"x\"\nrunner=\"python\"\ncommand=\"python3\"\ncpu=1\nmem=1\ntags=[]")
            .is_err());
        assert!(alias_pairs("[aliases]\n\"a/b\" = \"x\"").is_err());
    }
}

/// An image resolved from the config store, with the slots a session needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    /// What the agent needs to start it.
    pub spec: ImageSpec,
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub mem: i64,
    /// GPUs.
    pub gpu: f64,
}

impl ResolvedImage {
    /// `name:tag`, as stored in `kernels.lang`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.spec.name, self.spec.tag)
    }
}

fn image_not_found(lang: &str) -> Error {
    ApiError::new(Problem::ImageNotFound).with_detail(lang.chars().take(128).collect::<String>()).into()
}

/// Where the image catalogue lives in the config store.
pub const IMAGES_PREFIX: &str = "images/";

/// Resolves `lang` (an alias, `name` or `name:tag`; the default tag is `latest`) from
/// the in-memory copy of the image catalogue, so that creating a session needs no
/// config store round trip and works while it is down. A name the copy lacks is looked
/// up in the store (the copy may be a moment behind a change); if the store does not
/// answer then, the copy's answer (not found) stands.
pub async fn resolve_image(images: &ConfigMirror, store: &dyn ConfigStore, lang: &str) -> Result<ResolvedImage, Error> {
    match resolve_in(&images.entries(), lang) {
        Err(ResolveError::NotFound) => {}
        found => return found.map_err(|e| e.into_error(lang)),
    }
    if let Err(error) = images.refresh(store).await {
        tracing::warn!(%error, "cannot read the image catalogue; answering from the last copy");
    }
    resolve_in(&images.entries(), lang).map_err(|e| e.into_error(lang))
}

/// Why an image could not be resolved.
enum ResolveError {
    NotFound,
    /// The catalogue's definition of the image is broken.
    Bad(String),
}

impl ResolveError {
    fn into_error(self, lang: &str) -> Error {
        match self {
            Self::NotFound => image_not_found(lang),
            Self::Bad(why) => Error::ConfigStore(why),
        }
    }
}

fn resolve_in(catalogue: &Entries, lang: &str) -> Result<ResolvedImage, ResolveError> {
    let valid = |s: &str| s.len() <= 128 && valid_name(s);
    if !valid(lang) {
        return Err(ResolveError::NotFound);
    }
    let target = catalogue.get(&format!("{IMAGES_PREFIX}_aliases/{lang}")).map_or(lang, String::as_str);
    let (name, tag) = target.split_once(':').unwrap_or((target, "latest"));
    if !valid(name) || !valid(tag) {
        return Err(ResolveError::NotFound);
    }
    let prefix = format!("{IMAGES_PREFIX}{name}/");
    let fields: HashMap<&str, &str> = mirror::under(catalogue, &prefix).collect();
    if !fields.contains_key(format!("tags/{tag}").as_str()) {
        return Err(ResolveError::NotFound);
    }
    let number = |key: &str| -> Result<f64, ResolveError> {
        fields
            .get(key)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ResolveError::Bad(format!("image {name}: missing or bad {key}")))
    };
    let text = |key: &str| {
        fields
            .get(key)
            .map(|v| (*v).to_owned())
            .ok_or_else(|| ResolveError::Bad(format!("image {name}: missing {key}")))
    };
    Ok(ResolvedImage {
        spec: ImageSpec {
            name: name.to_owned(),
            tag: tag.to_owned(),
            runner: text("runner")?.parse().map_err(|e| ResolveError::Bad(format!("image {name}: {e}")))?,
            command: Some(text("command")?),
        },
        cpu: number("cpu")?,
        mem: number("mem")?.ceil() as i64,
        gpu: number("gpu").unwrap_or(0.0),
    })
}
