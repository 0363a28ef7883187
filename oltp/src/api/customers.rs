//! Customer signup, profile changes and lookups.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::body::{Fields, IdPath, JsonBody};
use super::{JsonResponse, Shared, is_sql_state};
use crate::error::{Error, Result};
use crate::routing::Placement;

const COLUMNS: &str =
    "id, email, name, region, country, city, address, lat, lon, created_at, updated_at";

pub(crate) struct NewCustomer {
    email: String,
    name: String,
    region: String,
    country: String,
    city: String,
    address: String,
    lat: f64,
    lon: f64,
}

pub(crate) fn parse_new(f: &Fields) -> Result<NewCustomer> {
    f.deny_unknown(&[
        "email", "name", "region", "country", "city", "address", "lat", "lon",
    ])?;
    let email = f.string("email", 254)?;
    if !email.contains('@') {
        return Err(Error::bad("email", "must be an email address"));
    }
    let c = NewCustomer {
        email,
        name: f.string("name", 200)?,
        region: f.string("region", 64)?,
        country: f.string("country", 64)?,
        city: f.string("city", 128)?,
        address: f.string("address", 500)?,
        lat: f.number("lat")?,
        lon: f.number("lon")?,
    };
    if !(-90.0..=90.0).contains(&c.lat) {
        return Err(Error::bad("lat", "must be between -90 and 90"));
    }
    if !(-180.0..=180.0).contains(&c.lon) {
        return Err(Error::bad("lon", "must be between -180 and 180"));
    }
    Ok(c)
}

fn to_json(row: &Row, shard: usize) -> Value {
    json!({
        "id": row.get::<_, i64>("id"),
        "shard": shard,
        "email": row.get::<_, String>("email"),
        "name": row.get::<_, String>("name"),
        "region": row.get::<_, String>("region"),
        "country": row.get::<_, String>("country"),
        "city": row.get::<_, String>("city"),
        "address": row.get::<_, String>("address"),
        "lat": row.get::<_, f64>("lat"),
        "lon": row.get::<_, f64>("lon"),
        "created_at": row.get::<_, chrono::DateTime<chrono::Utc>>("created_at"),
        "updated_at": row.get::<_, chrono::DateTime<chrono::Utc>>("updated_at"),
    })
}

/// `POST /customers`: allocate a global id, place, record in the directory,
/// then insert on the chosen shard.
pub(crate) async fn create(State(state): State<Shared>, JsonBody(body): JsonBody) -> JsonResponse {
    let c = parse_new(&body)?;
    let id: i64 = state
        .catalog
        .get()
        .await?
        .query_one("SELECT nextval('customer_ids')", &[])
        .await?
        .get(0);
    let shard = state.router.place(&Placement {
        customer_id: id,
        region: c.region.clone(),
        lat: c.lat,
        lon: c.lon,
    })?;
    // The directory row goes first: a customer row that no directory entry
    // points to would be unreachable.
    state
        .catalog
        .get()
        .await?
        .execute(
            "INSERT INTO customer_directory (customer_id, shard) VALUES ($1, $2)",
            &[&id, &(shard as i32)],
        )
        .await?;
    let inserted = state.shards[shard]
        .get()
        .await?
        .query_one(
            &format!(
                "INSERT INTO customers (id, email, name, region, country, city, address, lat, lon)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
            ),
            &[
                &id, &c.email, &c.name, &c.region, &c.country, &c.city, &c.address, &c.lat, &c.lon,
            ],
        )
        .await;
    match inserted {
        Ok(row) => {
            state.remember(id, shard);
            tracing::info!(customer_id = id, shard, "customer signed up");
            Ok((StatusCode::CREATED, Json(to_json(&row, shard))))
        }
        Err(e) => {
            // Best effort: drop the directory entry of the customer that was never created.
            if let Ok(conn) = state.catalog.get().await
                && let Err(error) = conn
                    .execute(
                        "DELETE FROM customer_directory WHERE customer_id = $1",
                        &[&id],
                    )
                    .await
            {
                tracing::warn!(customer_id = id, %error, "cannot remove orphan directory entry");
            }
            if is_sql_state(&e, &SqlState::UNIQUE_VIOLATION) {
                Err(Error::conflict(
                    "email",
                    "a customer with this email exists",
                ))
            } else {
                Err(e.into())
            }
        }
    }
}

/// Runs `sql` (returning [`COLUMNS`] of at most one row) on the shard of
/// customer `id` and answers with that row; `404` when there is none.
async fn on_customer_shard(
    state: &Shared,
    id: i64,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> JsonResponse {
    let not_found = || Error::NotFound {
        entity: "customer",
        id,
    };
    let shard = state.customer_shard(id).await?.ok_or_else(not_found)?;
    let row = state.shards[shard]
        .get()
        .await?
        .query_opt(sql, params)
        .await?
        .ok_or_else(not_found)?;
    Ok((StatusCode::OK, Json(to_json(&row, shard))))
}

/// `GET /customers/{id}`.
pub(crate) async fn fetch(State(state): State<Shared>, IdPath(id): IdPath) -> JsonResponse {
    let sql = format!("SELECT {COLUMNS} FROM customers WHERE id = $1");
    on_customer_shard(&state, id, &sql, &[&id]).await
}

/// `PATCH /customers/{id}`: change any of address, city, country and name.
pub(crate) async fn update(
    State(state): State<Shared>,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody,
) -> JsonResponse {
    body.deny_unknown(&["address", "city", "country", "name"])?;
    let address = body.opt_string("address", 500)?;
    let city = body.opt_string("city", 128)?;
    let country = body.opt_string("country", 64)?;
    let name = body.opt_string("name", 200)?;
    if address.is_none() && city.is_none() && country.is_none() && name.is_none() {
        return Err(Error::bad(
            "body",
            "expected at least one of address, city, country, name",
        ));
    }
    let sql = format!(
        "UPDATE customers SET
             address = coalesce($2, address),
             city = coalesce($3, city),
             country = coalesce($4, country),
             name = coalesce($5, name),
             updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    on_customer_shard(&state, id, &sql, &[&id, &address, &city, &country, &name]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::{bad_field, parse_object};

    fn field_of(body: &str) -> String {
        bad_field(parse_new(&parse_object(body.as_bytes()).unwrap()))
    }

    const OK: &str = r#"{"email":"a@b.c","name":"A","region":"eu","country":"DE","city":"Berlin","address":"x 1","lat":52.5,"lon":13.4}"#;

    #[test]
    fn valid_signup_parses() {
        let c = parse_new(&parse_object(OK.as_bytes()).unwrap()).unwrap();
        assert_eq!(c.region, "eu");
        assert_eq!(c.lat, 52.5);
    }

    #[test]
    fn invalid_signups_name_the_field() {
        assert_eq!(field_of(&OK.replace(r#""email":"a@b.c","#, "")), "email");
        assert_eq!(field_of(&OK.replace("a@b.c", "nope")), "email");
        assert_eq!(field_of(&OK.replace("52.5", "\"north\"")), "lat");
        assert_eq!(field_of(&OK.replace("52.5", "95")), "lat");
        assert_eq!(field_of(&OK.replace("13.4", "-181")), "lon");
        assert_eq!(
            field_of(&OK.replace(r#""name":"A""#, r#""name":"""#)),
            "name"
        );
        assert_eq!(field_of(&OK.replace(r#""city""#, r#""town""#)), "town");
    }
}
