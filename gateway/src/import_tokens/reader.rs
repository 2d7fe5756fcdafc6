//! Reading a DynamoDB export of the original's token table: the JSON that
//! `aws dynamodb scan` prints (`{"Items": [{"user_id": {"S": "42"}, ...}], ...}`) or the data
//! files of DynamoDB's export to S3 in its DynamoDB JSON format (one `{"Item": {...}}` per
//! line, usually gzipped). Each item is found with the line it starts on, so that a bad row
//! can be reported where it is.

use std::io::Read;

use serde_json::{Map, Value};

/// One item of an export: the line it starts on (1-based) and its attributes, or why it
/// could not be read.
#[derive(Debug)]
pub struct Entry {
    pub line: usize,
    pub item: Result<Map<String, Value>, String>,
}

/// Decompresses gzip input (by its magic bytes) and checks it is UTF-8.
pub fn decode(bytes: Vec<u8>) -> Result<String, String> {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot decompress (gzip): {e}"))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|_| "the export is not UTF-8 text".to_owned())
}

/// The items of an export, in either format.
pub fn entries(text: &str) -> Result<Vec<Entry>, String> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match serde_json::from_str::<Value>(first) {
        // A whole `{"Item": ...}` object on the first line: one item per line.
        Ok(Value::Object(o)) if o.contains_key("Item") => Ok(json_lines(text)),
        _ => scan_document(text),
    }
}

/// DynamoDB JSON lines (S3 export): `{"Item": {...}}` on each line.
fn json_lines(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| Entry {
            line: n + 1,
            item: match serde_json::from_str::<Value>(l) {
                Ok(Value::Object(mut o)) => match o.remove("Item") {
                    Some(Value::Object(item)) => Ok(item),
                    _ => Err("the line has no \"Item\" object".to_owned()),
                },
                Ok(_) => Err("the line is not a JSON object".to_owned()),
                Err(e) => Err(format!("the line is not valid JSON: {e}")),
            },
        })
        .collect()
}

/// The output of `aws dynamodb scan`: the elements of its top-level `Items` array, each
/// with the line it starts on.
fn scan_document(text: &str) -> Result<Vec<Entry>, String> {
    let document: Value =
        serde_json::from_str(text).map_err(|e| format!("the export is not valid JSON: {e}"))?;
    let Some(Value::Array(items)) = document.get("Items") else {
        return Err(
            "the export has no \"Items\" array (expected the output of `aws dynamodb scan` \
             or the lines of an S3 export)"
                .to_owned(),
        );
    };
    let starts = item_starts(text);
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| Entry {
            line: starts.get(i).copied().unwrap_or(0),
            item: match item {
                Value::Object(o) => Ok(o.clone()),
                _ => Err("the item is not a JSON object".to_owned()),
            },
        })
        .collect())
}

/// The line of each element of the top-level object's `Items` array (a document already
/// known to be valid JSON): a scan of strings, escapes and nesting depth.
fn item_starts(text: &str) -> Vec<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_string, mut escaped) = (false, false);
    let mut key_start = 0;
    let mut last_key = "";
    // Inside the `Items` array, and whether the next value starts an element.
    let (mut in_items, mut expect_element) = (false, false);
    let mut starts = Vec::new();
    for (i, c) in text.char_indices() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    if depth == 1 {
                        last_key = &text[key_start..i];
                    }
                }
                _ => {}
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        if in_items && depth == 2 && expect_element && c != ']' {
            starts.push(line);
            expect_element = false;
        }
        match c {
            '"' => {
                in_string = true;
                key_start = i + 1;
            }
            '{' | '[' => {
                depth += 1;
                if depth == 2 && c == '[' && last_key == "Items" {
                    (in_items, expect_element) = (true, true);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    in_items = false;
                }
            }
            ',' if in_items && depth == 2 => expect_element = true,
            _ => {}
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines_of(entries: &[Entry]) -> Vec<usize> {
        entries.iter().map(|e| e.line).collect()
    }

    #[test]
    fn a_scan_document_gives_each_item_with_its_line() {
        // As `aws dynamodb scan --output json` prints it.
        let text = r#"{
    "Items": [
        {
            "user_id": {"S": "42"},
            "room_id": {"S": "acme"},
            "token": {"S": "$2a$12$abc"}
        },
        {"user_id": {"N": "43"}, "room_id": {"S": "a \"quoted\" ] room"}, "token": {"S": "x"}},
        "not an object",
        {
            "user_id": {"S": "44"}
        }
    ],
    "Count": 4,
    "ScannedCount": 4,
    "ConsumedCapacity": null
}"#;
        let entries = entries(text).expect("read");
        assert_eq!(lines_of(&entries), vec![3, 8, 9, 10]);
        assert_eq!(entries[0].item.as_ref().map(|o| o.len()), Ok(3));
        assert!(entries[2].item.is_err());
    }

    #[test]
    fn s3_export_lines_give_each_item_with_its_line() {
        let text = "{\"Item\":{\"user_id\":{\"S\":\"42\"}}}\n\n{\"Item\":{\"user_id\":{\"N\":\"43\"}}}\nnot json\n{\"Other\":1}\n";
        let entries = entries(text).expect("read");
        assert_eq!(lines_of(&entries), vec![1, 3, 4, 5]);
        assert!(entries[0].item.is_ok() && entries[1].item.is_ok());
        assert!(
            entries[2]
                .item
                .as_ref()
                .is_err_and(|e| e.contains("not valid JSON"))
        );
        assert!(
            entries[3]
                .item
                .as_ref()
                .is_err_and(|e| e.contains("\"Item\""))
        );
    }

    #[test]
    fn gzipped_exports_are_decompressed() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"Item\":{\"user_id\":{\"S\":\"42\"}}}\n")
            .expect("write");
        let text = decode(gz.finish().expect("finish")).expect("decoded");
        assert_eq!(entries(&text).expect("read").len(), 1);
        assert_eq!(decode(b"plain".to_vec()).as_deref(), Ok("plain"));
        assert!(decode(vec![0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_document_that_is_neither_format_is_refused() {
        for text in [
            "{\"Count\": 0}",
            "[1, 2]",
            "{\"Items\": 5}",
            "{\"Items\": [",
        ] {
            assert!(entries(text).is_err(), "{text}");
        }
    }
}
