//! A small seeded generator of request parts: values shaped by the spec's
//! schemas (mostly valid, so that requests reach past parsing), with
//! boundary values mixed in (empty, huge, deeply nested, wrong types, NUL,
//! unicode, numbers at the i64/u64/f64 edges), and raw bodies that are not
//! JSON at all. The same seed gives the same requests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

pub struct Generator {
    rng: StdRng,
}

/// Values that exist on the server, by schema `format` or property name
/// (`mx-user-id`, `room_id`, ...), so that valid-looking requests are valid.
pub type Hints<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        self.rng.gen_bool(probability.clamp(0.0, 1.0))
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.rng.gen_range(0..len.max(1))
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())].clone()
    }

    /// A string at some boundary.
    pub fn boundary_string(&mut self) -> String {
        match self.index(24) {
            0 => String::new(),
            1 => " ".into(),
            2 => "\u{0}".into(),
            3 => "a\u{0}b".into(),
            4 => "x".repeat(70_000),
            5 => "x".repeat(256),
            6 => "🦀".repeat(300),
            7 => "\u{202e}\u{200b}\u{feff}".into(),
            8 => "\u{ffff}\u{10ffff}".into(),
            9 => self
                .pick(&["@", "!", "#", "$", ":", "@:", "!:x", "#a:"])
                .into(),
            10 => "@fuzz:lattice.test".into(),
            11 => "!fuzz:lattice.test".into(),
            12 => "#fuzz:lattice.test".into(),
            13 => "$fuzz".into(),
            14 => "mxc://lattice.test/media".into(),
            15 => "http://example.org/x".into(),
            16 => "../../etc/passwd".into(),
            17 => "'; DROP TABLE events; --".into(),
            18 => self
                .pick(&["-1", "0", "1e309", "NaN", "null", "true"])
                .into(),
            19 => "9223372036854775808".into(),
            20 => "\t\n\r\\\"".into(),
            21 => "%00%ZZ".into(),
            22 => "é".repeat(self.rng.gen_range(1..2000)),
            _ => {
                let len = self.rng.gen_range(1..40);
                (0..len)
                    .map(|_| char::from_u32(self.rng.gen_range(0x20..0x3000)).unwrap_or('?'))
                    .collect()
            }
        }
    }

    /// A number at some boundary.
    pub fn boundary_number(&mut self) -> Value {
        match self.index(14) {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(i64::MAX),
            3 => json!(i64::MIN),
            4 => json!(u64::MAX),
            5 => json!(9_007_199_254_740_993_u64),
            6 => json!(-9_007_199_254_740_993_i64),
            7 => json!(1.5),
            8 => json!(-0.0),
            9 => json!(f64::MAX),
            10 => json!(f64::MIN_POSITIVE),
            11 => json!(-1e300),
            12 => json!(i32::MAX as i64 + 1),
            _ => json!(self.rng.gen::<i64>()),
        }
    }

    /// A value of any type at some boundary.
    pub fn boundary(&mut self) -> Value {
        match self.index(12) {
            0..=2 => Value::String(self.boundary_string()),
            3..=4 => self.boundary_number(),
            5 => Value::Null,
            6 => json!(self.chance(0.5)),
            7 => json!([]),
            8 => json!({}),
            9 => {
                let depth = self.pick(&[20, 100, 127]);
                let mut value = json!(1);
                for _ in 0..depth {
                    value = if self.chance(0.5) {
                        json!([value])
                    } else {
                        json!({ "a": value })
                    };
                }
                value
            }
            10 => Value::Array((0..2000).map(|n| json!(format!("item{n}"))).collect()),
            _ => Value::Object(
                (0..500)
                    .map(|n| (format!("key{n}"), json!(n)))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// A body that is not a JSON object, or not JSON at all.
    pub fn raw_body(&mut self) -> Vec<u8> {
        match self.index(12) {
            0 => Vec::new(),
            1 => b"  \n".to_vec(),
            2 => b"{".to_vec(),
            3 => b"{\"a\":1}{\"b\":2}".to_vec(),
            4 => b"\xff\xfe\xfd".to_vec(),
            5 => b"\xef\xbb\xbf{}".to_vec(),
            6 => b"{\"a\":1,\"a\":2}".to_vec(),
            7 => format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            8 => vec![b' '; 1024 * 1024 + 1],
            9 => b"{\"a\":\"\\ud800\"}".to_vec(),
            10 => b"nul\0".to_vec(),
            _ => self.boundary().to_string().into_bytes(),
        }
    }

    /// A value for `schema` (the property `name`): valid unless a mutation
    /// strikes, each node with probability `mutate`.
    pub fn value(
        &mut self,
        schema: &Value,
        name: &str,
        hints: Hints<'_>,
        mutate: f64,
        depth: usize,
    ) -> Value {
        if self.chance(mutate) || depth > 6 {
            return self.boundary();
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.is_empty() {
                return self.pick(options);
            }
        }
        for alternatives in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(alternatives).and_then(Value::as_array) {
                if !options.is_empty() {
                    let option = self.pick(options);
                    return self.value(&option, name, hints, mutate, depth + 1);
                }
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for part in all {
                if let Value::Object(value) = self.value(part, name, hints, mutate, depth + 1) {
                    merged.extend(value);
                }
            }
            return Value::Object(merged);
        }
        if let Some(example) = schema.get("example") {
            if self.chance(0.2) {
                return example.clone();
            }
        }
        let kind = match schema.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(Value::Array(kinds)) if !kinds.is_empty() => {
                self.pick(kinds).as_str().unwrap_or("string").to_owned()
            }
            _ if schema.get("properties").is_some() => "object".into(),
            _ => return self.boundary(),
        };
        match kind.as_str() {
            "object" => self.object(schema, hints, mutate, depth),
            "array" => {
                let items = schema.get("items").cloned().unwrap_or(json!({}));
                let len = self.index(4);
                Value::Array(
                    (0..len)
                        .map(|_| self.value(&items, name, hints, mutate, depth + 1))
                        .collect(),
                )
            }
            "string" => {
                let format = schema.get("format").and_then(Value::as_str);
                let hinted = format.and_then(hints).or_else(|| hints(name));
                match hinted {
                    Some(value) if self.chance(0.8) => Value::String(value),
                    _ => Value::String(self.boundary_string()),
                }
            }
            "integer" => {
                let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
                let max = schema.get("maximum").and_then(Value::as_i64).unwrap_or(100);
                if self.chance(0.7) && min <= max {
                    json!(self.rng.gen_range(min..=max))
                } else {
                    self.boundary_number()
                }
            }
            "number" => self.boundary_number(),
            "boolean" => json!(self.chance(0.5)),
            "null" => Value::Null,
            _ => self.boundary(),
        }
    }

    fn object(&mut self, schema: &Value, hints: Hints<'_>, mutate: f64, depth: usize) -> Value {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut object = Map::new();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, property) in properties {
                let is_required = required.contains(&key.as_str());
                // A required field left out is one of the mutations.
                let keep = if is_required {
                    !self.chance(mutate)
                } else {
                    self.chance(0.5)
                };
                if keep {
                    let value = self.value(property, key, hints, mutate, depth + 1);
                    object.insert(key.clone(), value);
                }
            }
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            for _ in 0..self.index(3) {
                let key = if self.chance(0.7) {
                    format!("k{}", self.index(1000))
                } else {
                    self.boundary_string()
                };
                let value = self.value(extra, &key, hints, mutate, depth + 1);
                object.insert(key, value);
            }
        }
        if self.chance(mutate) {
            object.insert(self.boundary_string(), self.boundary());
        }
        Value::Object(object)
    }
}
