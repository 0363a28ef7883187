//! The product catalog and its price history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::body::{Fields, IdPath, JsonBody};
use super::{JsonResponse, Shared, is_sql_state};
use crate::cache::Loaded;
use crate::error::{Error, Result};
use crate::money::{cents_from_json, cents_to_json};

const COLUMNS: &str = "id, sku, name, category, (price * 100)::bigint AS price_cents, active, \
     created_at, updated_at, version";

/// Catalog listings are capped; the catalog is small by design.
const LIST_LIMIT: i64 = 10_000;

pub(crate) struct NewProduct {
    sku: String,
    name: String,
    category: String,
    price_cents: i64,
}

pub(crate) fn parse_new(f: &Fields) -> Result<NewProduct> {
    f.deny_unknown(&["sku", "name", "category", "price"])?;
    Ok(NewProduct {
        sku: f.string("sku", 64)?,
        name: f.string("name", 200)?,
        category: f.string("category", 64)?,
        price_cents: cents_from_json("price", f.number("price")?)?,
    })
}

fn to_json(row: &Row) -> Value {
    json!({
        "id": row.get::<_, i64>("id"),
        "sku": row.get::<_, String>("sku"),
        "name": row.get::<_, String>("name"),
        "category": row.get::<_, String>("category"),
        "price": cents_to_json(row.get("price_cents")),
        "active": row.get::<_, bool>("active"),
        "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>("created_at"),
        "updated_at": row.get::<_, chrono::DateTime<chrono::Utc>>("updated_at"),
        "version": row.get::<_, i64>("version"),
    })
}

/// `POST /products`.
pub(crate) async fn create(State(state): State<Shared>, JsonBody(body): JsonBody) -> JsonResponse {
    let p = parse_new(&body)?;
    let row = state
        .catalog
        .get()
        .await?
        .query_one(
            &format!(
                "INSERT INTO products (sku, name, category, price)
                 VALUES ($1, $2, $3, $4::bigint::numeric / 100) RETURNING {COLUMNS}"
            ),
            &[&p.sku, &p.name, &p.category, &p.price_cents],
        )
        .await
        .map_err(|e| {
            if is_sql_state(&e, &SqlState::UNIQUE_VIOLATION) {
                Error::conflict("sku", "a product with this sku exists")
            } else {
                e.into()
            }
        })?;
    Ok((StatusCode::CREATED, Json(to_json(&row))))
}

/// `GET /products`.
pub(crate) async fn list(State(state): State<Shared>) -> JsonResponse {
    let rows = state
        .catalog
        .get()
        .await?
        .query(
            &format!("SELECT {COLUMNS} FROM products ORDER BY id LIMIT $1"),
            &[&LIST_LIMIT],
        )
        .await?;
    Ok((
        StatusCode::OK,
        Json(Value::Array(rows.iter().map(to_json).collect())),
    ))
}

/// `GET /products/{id}`: through the product cache when there is one.
pub(crate) async fn fetch(State(state): State<Shared>, IdPath(id): IdPath) -> JsonResponse {
    let load = || async {
        let row = state
            .catalog
            .get()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM products WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.map(|r| Loaded {
            version: r.get("version"),
            json: to_json(&r),
        }))
    };
    let product = match &state.cache {
        Some(cache) => cache.product(id, load).await?,
        None => load().await?.map(|l| l.json),
    };
    let product = product.ok_or(Error::NotFound {
        entity: "product",
        id,
    })?;
    Ok((StatusCode::OK, Json(product)))
}

/// `PATCH /products/{id}/price`: the new price and its history row commit together.
pub(crate) async fn change_price(
    State(state): State<Shared>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    body.deny_unknown(&["price"])?;
    let cents = cents_from_json("price", body.number("price")?)?;
    let mut conn = state.catalog.get().await?;
    let tx = conn.transaction().await?;
    let old: i64 = tx
        .query_opt(
            "SELECT (price * 100)::bigint FROM products WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or(Error::NotFound {
            entity: "product",
            id,
        })?
        .get(0);
    let row = tx
        .query_one(
            &format!(
                "UPDATE products SET price = $2::bigint::numeric / 100, updated_at = now()
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id, &cents],
        )
        .await?;
    tx.execute(
        "INSERT INTO price_changes (product_id, old_price, new_price)
         VALUES ($1, $2::bigint::numeric / 100, $3::bigint::numeric / 100)",
        &[&id, &old, &cents],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(product_id = id, "price changed");
    Ok((StatusCode::OK, Json(to_json(&row))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::{bad_field, parse_object};

    fn field_of(body: &str) -> String {
        bad_field(parse_new(&parse_object(body.as_bytes()).unwrap()))
    }

    #[test]
    fn product_validation_names_the_field() {
        let ok = r#"{"sku":"S1","name":"N","category":"C","price":9.99}"#;
        assert_eq!(
            parse_new(&parse_object(ok.as_bytes()).unwrap())
                .unwrap()
                .price_cents,
            999
        );
        assert_eq!(field_of(&ok.replace("9.99", "-1")), "price");
        assert_eq!(field_of(&ok.replace("9.99", "\"9.99\"")), "price");
        assert_eq!(field_of(&ok.replace("9.99", "9.999")), "price");
        assert_eq!(field_of(&ok.replace(r#""sku":"S1","#, "")), "sku");
        assert_eq!(
            field_of(&ok.replace(r#""category":"C""#, r#""category":7"#)),
            "category"
        );
    }
}
