//! SSB's tables derived from TPC-H rows made by `tpchgen`, as the SSB paper
//! (O'Neil, O'Neil, Chen: "Star Schema Benchmark", rev. 3) describes:
//!
//! - `lineorder` is `lineitem` joined with `orders` (and with `partsupp` for
//!   the supply cost): prices in cents, discount and tax in percent,
//!   `lo_revenue = lo_extendedprice * (100 - lo_discount) / 100`, dates as
//!   `yyyymmdd` keys into `dwdate`; the shipping and return columns are gone.
//! - `customer` and `supplier` lose their balances and comments and gain
//!   `city` (the nation's first nine letters and a digit), `nation` and
//!   `region` in place of the keys of the `nation` and `region` tables.
//! - `part` splits TPC-H's brand: `p_mfgr` `MFGR#m`, `p_category` `MFGR#mn`
//!   and `p_brand1` `MFGR#mnbb` with 40 brands per category.
//! - `dwdate` is a calendar of 1992-01-01 to 1998-12-31.
//!
//! lineorder is stored sorted by order date (see [`cluster_by_date`]).
//!
//! One departure: the dimensions keep TPC-H's cardinalities (customer
//! 150 000 × SF instead of SSB's 30 000 × SF, and so on) because lineorder
//! inherits TPC-H's keys; lineorder itself has SSB's 6 000 000 × SF rows.
//! The random choices SSB's `dbgen` makes (city digit, brand number) are a
//! hash of the row's key, so the data is the same on every run.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::{Datelike, Days, NaiveDate, Weekday};
use tpchgen::dates::TPCHDate;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};

use crate::{Error, Result};

/// Rows per Arrow batch.
const BATCH_ROWS: usize = 64 * 1024;
/// TPC-H gives every part this many suppliers, in `partsupp` order.
const SUPPLIERS_PER_PART: usize = 4;
/// SSB's brands per category (`MFGR#mn01` to `MFGR#mn40`).
const BRANDS_PER_CATEGORY: u64 = 40;

/// The five SSB tables, each as Arrow batches.
pub(crate) struct Tables {
    pub(crate) lineorder: Vec<RecordBatch>,
    pub(crate) customer: Vec<RecordBatch>,
    pub(crate) supplier: Vec<RecordBatch>,
    pub(crate) part: Vec<RecordBatch>,
    pub(crate) dwdate: Vec<RecordBatch>,
}

impl Tables {
    /// `(name, schema, batches)` for every table, facts first.
    pub(crate) fn into_named(self) -> Vec<(&'static str, SchemaRef, Vec<RecordBatch>)> {
        vec![
            ("lineorder", lineorder_schema(), self.lineorder),
            ("customer", customer_schema(), self.customer),
            ("supplier", supplier_schema(), self.supplier),
            ("part", part_schema(), self.part),
            ("dwdate", dwdate_schema(), self.dwdate),
        ]
    }
}

/// Generates every table at `scale`, the lineorder in `threads` parallel parts.
pub(crate) fn generate(scale: f64, threads: usize) -> Result<Tables> {
    let geography = Geography::load();
    let costs = SupplyCosts::load(scale)?;
    let parts = threads.max(1) as i32;
    let lineorder = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=parts)
            .map(|part| {
                let costs = &costs;
                s.spawn(move || lineorder_part(scale, part, parts, costs))
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            let batches = handle
                .join()
                .map_err(|_| Error::Internal("a lineorder generator thread panicked".into()))??;
            all.extend(batches);
        }
        Ok::<_, Error>(all)
    })?;
    Ok(Tables {
        lineorder: cluster_by_date(lineorder)?,
        customer: customers(scale, &geography)?,
        supplier: suppliers(scale, &geography)?,
        part: parts_table(scale)?,
        dwdate: dwdate()?,
    })
}

/// Sorts lineorder by `(lo_orderdate, lo_orderkey, lo_linenumber)`: the
/// fact table clustered on its date, the physical design the SSB paper
/// discusses and column stores use, so row-group and page statistics let a
/// reader skip what a date filter excludes. TPC-H generates in order-key
/// order, where dates are random.
fn cluster_by_date(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
    let schema = lineorder_schema();
    let all = concat_batches(&schema, &batches)?;
    drop(batches);
    let column = |name: &str| -> Result<SortColumn> {
        Ok(SortColumn {
            values: all
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("lineorder has no {name}")))?
                .clone(),
            options: None,
        })
    };
    let order = lexsort_to_indices(
        &[
            column("lo_orderdate")?,
            column("lo_orderkey")?,
            column("lo_linenumber")?,
        ],
        None,
    )?;
    let sorted = take_record_batch(&all, &order)?;
    drop(all);
    let mut out = Vec::with_capacity(sorted.num_rows().div_ceil(BATCH_ROWS));
    let mut start = 0;
    while start < sorted.num_rows() {
        let len = BATCH_ROWS.min(sorted.num_rows() - start);
        out.push(sorted.slice(start, len));
        start += len;
    }
    Ok(out)
}

/// `yyyymmdd` of a TPC-H date, SSB's date key.
pub(crate) fn date_key(date: TPCHDate) -> i32 {
    let (y, m, d) = date.to_ymd();
    (1900 + y) * 10_000 + m * 100 + d
}

/// SSB's `lo_revenue`: the extended price less the discount, in cents.
pub(crate) fn revenue(extended_price_cents: i64, discount_percent: i32) -> i64 {
    extended_price_cents * (100 - discount_percent as i64) / 100
}

/// SSB's city: the nation's name cut or padded to nine characters, then a
/// digit (`UNITED KI1`, `CHINA    7`).
pub(crate) fn city(nation: &str, key: i64, salt: u64) -> String {
    let digit = mix(key as u64 ^ salt) % 10;
    format!("{nation:<9.9}{digit}")
}

/// SplitMix64's finaliser: a well-spread hash of a key, standing in for the
/// random draws of SSB's `dbgen`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const CUSTOMER_CITY_SALT: u64 = 0x0c57;
const SUPPLIER_CITY_SALT: u64 = 0x5a99;
const BRAND_SALT: u64 = 0xb4a0;

fn field(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, false)
}

pub(crate) fn lineorder_schema() -> SchemaRef {
    use DataType::{Int32, Int64, Utf8};
    Arc::new(Schema::new(vec![
        field("lo_orderkey", Int64),
        field("lo_linenumber", Int32),
        field("lo_custkey", Int32),
        field("lo_partkey", Int32),
        field("lo_suppkey", Int32),
        field("lo_orderdate", Int32),
        field("lo_orderpriority", Utf8),
        field("lo_shippriority", Int32),
        field("lo_quantity", Int32),
        field("lo_extendedprice", Int64),
        field("lo_ordtotalprice", Int64),
        field("lo_discount", Int32),
        field("lo_revenue", Int64),
        field("lo_supplycost", Int64),
        field("lo_tax", Int32),
        field("lo_commitdate", Int32),
        field("lo_shipmode", Utf8),
    ]))
}

pub(crate) fn customer_schema() -> SchemaRef {
    use DataType::{Int32, Utf8};
    Arc::new(Schema::new(vec![
        field("c_custkey", Int32),
        field("c_name", Utf8),
        field("c_address", Utf8),
        field("c_city", Utf8),
        field("c_nation", Utf8),
        field("c_region", Utf8),
        field("c_phone", Utf8),
        field("c_mktsegment", Utf8),
    ]))
}

pub(crate) fn supplier_schema() -> SchemaRef {
    use DataType::{Int32, Utf8};
    Arc::new(Schema::new(vec![
        field("s_suppkey", Int32),
        field("s_name", Utf8),
        field("s_address", Utf8),
        field("s_city", Utf8),
        field("s_nation", Utf8),
        field("s_region", Utf8),
        field("s_phone", Utf8),
    ]))
}

pub(crate) fn part_schema() -> SchemaRef {
    use DataType::{Int32, Utf8};
    Arc::new(Schema::new(vec![
        field("p_partkey", Int32),
        field("p_name", Utf8),
        field("p_mfgr", Utf8),
        field("p_category", Utf8),
        field("p_brand1", Utf8),
        field("p_color", Utf8),
        field("p_type", Utf8),
        field("p_size", Int32),
        field("p_container", Utf8),
    ]))
}

pub(crate) fn dwdate_schema() -> SchemaRef {
    use DataType::{Boolean, Int32, Utf8};
    Arc::new(Schema::new(vec![
        field("d_datekey", Int32),
        field("d_date", Utf8),
        field("d_dayofweek", Utf8),
        field("d_month", Utf8),
        field("d_year", Int32),
        field("d_yearmonthnum", Int32),
        field("d_yearmonth", Utf8),
        field("d_daynuminweek", Int32),
        field("d_daynuminmonth", Int32),
        field("d_daynuminyear", Int32),
        field("d_monthnuminyear", Int32),
        field("d_weeknuminyear", Int32),
        field("d_sellingseason", Utf8),
        field("d_lastdayinweekfl", Boolean),
        field("d_lastdayinmonthfl", Boolean),
        field("d_holidayfl", Boolean),
        field("d_weekdayfl", Boolean),
    ]))
}

/// Converts a TPC-H key to SSB's 32-bit dimension key.
fn key32(key: i64, what: &str) -> Result<i32> {
    i32::try_from(key).map_err(|_| Error::Internal(format!("{what} {key} does not fit in 32 bits")))
}

/// Nation names and their region names, by TPC-H nation key.
struct Geography {
    nations: Vec<(String, String)>,
}

impl Geography {
    fn load() -> Geography {
        let regions: Vec<(i64, String)> = RegionGenerator::new(1.0, 1, 1)
            .iter()
            .map(|r| (r.r_regionkey, r.r_name.to_string()))
            .collect();
        let mut nations: Vec<(i64, String, String)> = NationGenerator::new(1.0, 1, 1)
            .iter()
            .map(|n| {
                let region = regions
                    .iter()
                    .find(|(k, _)| *k == n.n_regionkey)
                    .map(|(_, name)| name.clone())
                    .unwrap_or_default();
                (n.n_nationkey, n.n_name.to_string(), region)
            })
            .collect();
        nations.sort_by_key(|(k, _, _)| *k);
        Geography {
            nations: nations.into_iter().map(|(_, n, r)| (n, r)).collect(),
        }
    }

    fn nation(&self, key: i64) -> Result<&(String, String)> {
        usize::try_from(key)
            .ok()
            .and_then(|k| self.nations.get(k))
            .ok_or_else(|| Error::Internal(format!("nation key {key} out of range")))
    }
}

/// `ps_supplycost` in cents for every (part, supplier), laid out as
/// `partsupp` is generated: four suppliers per part, parts in key order.
pub(crate) struct SupplyCosts {
    rows: Vec<(i64, i64)>,
}

impl SupplyCosts {
    pub(crate) fn load(scale: f64) -> Result<SupplyCosts> {
        let mut rows = Vec::new();
        for (i, ps) in PartSuppGenerator::new(scale, 1, 1).iter().enumerate() {
            let expected = (i / SUPPLIERS_PER_PART) as i64 + 1;
            if ps.ps_partkey != expected {
                return Err(Error::Internal(format!(
                    "partsupp row {i} has part {} where {expected} was expected",
                    ps.ps_partkey
                )));
            }
            rows.push((ps.ps_suppkey, ps.ps_supplycost.into_inner()));
        }
        Ok(SupplyCosts { rows })
    }

    /// The supply cost of `supplier` for `part`; TPC-H draws every lineitem's
    /// supplier from the part's four, so a miss is a generator bug. Below
    /// about SF 0.01 a part can list the same supplier twice; the first row
    /// wins, as an SQL join that kept one match would.
    pub(crate) fn get(&self, part: i64, supplier: i64) -> Result<i64> {
        let start = usize::try_from(part - 1).unwrap_or(usize::MAX) * SUPPLIERS_PER_PART;
        self.rows
            .get(start..start + SUPPLIERS_PER_PART)
            .and_then(|four| four.iter().find(|(s, _)| *s == supplier))
            .map(|(_, cost)| *cost)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "no partsupp row for part {part}, supplier {supplier}"
                ))
            })
    }
}

/// Builds lineorder batches row by row.
struct LineorderBuilder {
    orderkey: Int64Builder,
    linenumber: Int32Builder,
    custkey: Int32Builder,
    partkey: Int32Builder,
    suppkey: Int32Builder,
    orderdate: Int32Builder,
    orderpriority: StringBuilder,
    shippriority: Int32Builder,
    quantity: Int32Builder,
    extendedprice: Int64Builder,
    ordtotalprice: Int64Builder,
    discount: Int32Builder,
    revenue: Int64Builder,
    supplycost: Int64Builder,
    tax: Int32Builder,
    commitdate: Int32Builder,
    shipmode: StringBuilder,
    rows: usize,
}

impl LineorderBuilder {
    fn new() -> Self {
        LineorderBuilder {
            orderkey: Int64Builder::with_capacity(BATCH_ROWS),
            linenumber: Int32Builder::with_capacity(BATCH_ROWS),
            custkey: Int32Builder::with_capacity(BATCH_ROWS),
            partkey: Int32Builder::with_capacity(BATCH_ROWS),
            suppkey: Int32Builder::with_capacity(BATCH_ROWS),
            orderdate: Int32Builder::with_capacity(BATCH_ROWS),
            orderpriority: StringBuilder::new(),
            shippriority: Int32Builder::with_capacity(BATCH_ROWS),
            quantity: Int32Builder::with_capacity(BATCH_ROWS),
            extendedprice: Int64Builder::with_capacity(BATCH_ROWS),
            ordtotalprice: Int64Builder::with_capacity(BATCH_ROWS),
            discount: Int32Builder::with_capacity(BATCH_ROWS),
            revenue: Int64Builder::with_capacity(BATCH_ROWS),
            supplycost: Int64Builder::with_capacity(BATCH_ROWS),
            tax: Int32Builder::with_capacity(BATCH_ROWS),
            commitdate: Int32Builder::with_capacity(BATCH_ROWS),
            shipmode: StringBuilder::new(),
            rows: 0,
        }
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.orderkey.finish()),
            Arc::new(self.linenumber.finish()),
            Arc::new(self.custkey.finish()),
            Arc::new(self.partkey.finish()),
            Arc::new(self.suppkey.finish()),
            Arc::new(self.orderdate.finish()),
            Arc::new(self.orderpriority.finish()),
            Arc::new(self.shippriority.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(self.extendedprice.finish()),
            Arc::new(self.ordtotalprice.finish()),
            Arc::new(self.discount.finish()),
            Arc::new(self.revenue.finish()),
            Arc::new(self.supplycost.finish()),
            Arc::new(self.tax.finish()),
            Arc::new(self.commitdate.finish()),
            Arc::new(self.shipmode.finish()),
        ];
        Ok(RecordBatch::try_new(lineorder_schema(), columns)?)
    }
}

/// One part of lineorder: TPC-H's orders and lineitems of the same part are
/// both generated in order-key order, so the join is a merge.
fn lineorder_part(
    scale: f64,
    part: i32,
    parts: i32,
    costs: &SupplyCosts,
) -> Result<Vec<RecordBatch>> {
    let order_generator = OrderGenerator::new(scale, part, parts);
    let line_generator = LineItemGenerator::new(scale, part, parts);
    let mut orders = order_generator.iter();
    let mut order = orders.next();
    let mut b = LineorderBuilder::new();
    let mut batches = Vec::new();
    for line in line_generator.iter() {
        let o = loop {
            match &order {
                Some(o) if o.o_orderkey == line.l_orderkey => break o,
                Some(o) if o.o_orderkey > line.l_orderkey => {
                    return Err(Error::Internal(format!(
                        "lineitem of order {} after order {}",
                        line.l_orderkey, o.o_orderkey
                    )));
                }
                Some(_) => order = orders.next(),
                None => {
                    return Err(Error::Internal(format!(
                        "lineitem of order {} has no order",
                        line.l_orderkey
                    )));
                }
            }
        };
        let discount = line.l_discount.into_inner() as i32;
        let extended = line.l_extendedprice.into_inner();
        b.orderkey.append_value(line.l_orderkey);
        b.linenumber.append_value(line.l_linenumber);
        b.custkey.append_value(key32(o.o_custkey, "customer key")?);
        b.partkey.append_value(key32(line.l_partkey, "part key")?);
        b.suppkey
            .append_value(key32(line.l_suppkey, "supplier key")?);
        b.orderdate.append_value(date_key(o.o_orderdate));
        b.orderpriority.append_value(o.o_orderpriority);
        b.shippriority.append_value(o.o_shippriority);
        b.quantity.append_value(line.l_quantity as i32);
        b.extendedprice.append_value(extended);
        b.ordtotalprice.append_value(o.o_totalprice.into_inner());
        b.discount.append_value(discount);
        b.revenue.append_value(revenue(extended, discount));
        b.supplycost
            .append_value(costs.get(line.l_partkey, line.l_suppkey)?);
        b.tax.append_value(line.l_tax.into_inner() as i32);
        b.commitdate.append_value(date_key(line.l_commitdate));
        b.shipmode.append_value(line.l_shipmode);
        b.rows += 1;
        if b.rows == BATCH_ROWS {
            batches.push(b.finish()?);
        }
    }
    if b.rows > 0 {
        batches.push(b.finish()?);
    }
    Ok(batches)
}

/// Cuts a column-wise table into batches: `columns` gets a row index range
/// and returns that slice's arrays.
fn batched(
    schema: SchemaRef,
    rows: usize,
    mut columns: impl FnMut(std::ops::Range<usize>) -> Result<Vec<ArrayRef>>,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + BATCH_ROWS).min(rows);
        out.push(RecordBatch::try_new(schema.clone(), columns(start..end)?)?);
        start = end;
    }
    Ok(out)
}

/// A string column of one dimension being built.
type Strings = Vec<String>;

fn string_array(values: &[String]) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(values.len(), values.iter().map(String::len).sum());
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn int_array(values: &[i32]) -> ArrayRef {
    let mut b = Int32Builder::with_capacity(values.len());
    b.append_slice(values);
    Arc::new(b.finish())
}

fn bool_array(values: &[bool]) -> ArrayRef {
    let mut b = BooleanBuilder::with_capacity(values.len());
    b.append_slice(values);
    Arc::new(b.finish())
}

fn customers(scale: f64, geography: &Geography) -> Result<Vec<RecordBatch>> {
    let (mut key, mut name, mut address, mut city_, mut nation, mut region, mut phone, mut segment) = (
        Vec::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
    );
    for c in CustomerGenerator::new(scale, 1, 1).iter() {
        let (n, r) = geography.nation(c.c_nationkey)?;
        key.push(key32(c.c_custkey, "customer key")?);
        name.push(c.c_name.to_string());
        address.push(c.c_address.to_string());
        city_.push(city(n, c.c_custkey, CUSTOMER_CITY_SALT));
        nation.push(n.clone());
        region.push(r.clone());
        phone.push(c.c_phone.to_string());
        segment.push(c.c_mktsegment.to_string());
    }
    batched(customer_schema(), key.len(), |r| {
        Ok(vec![
            int_array(&key[r.clone()]),
            string_array(&name[r.clone()]),
            string_array(&address[r.clone()]),
            string_array(&city_[r.clone()]),
            string_array(&nation[r.clone()]),
            string_array(&region[r.clone()]),
            string_array(&phone[r.clone()]),
            string_array(&segment[r]),
        ])
    })
}

fn suppliers(scale: f64, geography: &Geography) -> Result<Vec<RecordBatch>> {
    let (mut key, mut name, mut address, mut city_, mut nation, mut region, mut phone) = (
        Vec::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
    );
    for s in SupplierGenerator::new(scale, 1, 1).iter() {
        let (n, r) = geography.nation(s.s_nationkey)?;
        key.push(key32(s.s_suppkey, "supplier key")?);
        name.push(s.s_name.to_string());
        address.push(s.s_address.to_string());
        city_.push(city(n, s.s_suppkey, SUPPLIER_CITY_SALT));
        nation.push(n.clone());
        region.push(r.clone());
        phone.push(s.s_phone.to_string());
    }
    batched(supplier_schema(), key.len(), |r| {
        Ok(vec![
            int_array(&key[r.clone()]),
            string_array(&name[r.clone()]),
            string_array(&address[r.clone()]),
            string_array(&city_[r.clone()]),
            string_array(&nation[r.clone()]),
            string_array(&region[r.clone()]),
            string_array(&phone[r]),
        ])
    })
}

/// The digits after `#` in TPC-H's `Manufacturer#1` and `Brand#13`.
fn after_hash(text: &str) -> Result<&str> {
    text.rsplit_once('#')
        .map(|(_, digits)| digits)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Error::Internal(format!("{text:?} has no number after '#'")))
}

/// SSB's `(p_mfgr, p_category, p_brand1)` from TPC-H's brand `Brand#mn`:
/// the category is TPC-H's brand, and one of 40 brands within it is picked
/// by the part key.
pub(crate) fn part_hierarchy(tpch_brand: &str, part_key: i64) -> Result<(String, String, String)> {
    let mn = after_hash(tpch_brand)?;
    if mn.len() != 2 {
        return Err(Error::Internal(format!(
            "unexpected TPC-H brand {tpch_brand:?}"
        )));
    }
    let brand = 1 + mix(part_key as u64 ^ BRAND_SALT) % BRANDS_PER_CATEGORY;
    Ok((
        format!("MFGR#{}", &mn[..1]),
        format!("MFGR#{mn}"),
        format!("MFGR#{mn}{brand:02}"),
    ))
}

fn parts_table(scale: f64) -> Result<Vec<RecordBatch>> {
    let mut key = Vec::new();
    let mut size = Vec::new();
    let (mut name, mut mfgr, mut category, mut brand, mut color, mut kind, mut container) = (
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
        Strings::new(),
    );
    for p in PartGenerator::new(scale, 1, 1).iter() {
        let full_name = p.p_name.to_string();
        let (m, c, b) = part_hierarchy(&p.p_brand.to_string(), p.p_partkey)?;
        // TPC-H's MFGR and brand agree on the first digit; SSB relies on it.
        if after_hash(&p.p_mfgr.to_string())? != &c[5..6] {
            return Err(Error::Internal(format!(
                "part {}: {} and {} disagree",
                p.p_partkey, p.p_mfgr, p.p_brand
            )));
        }
        key.push(key32(p.p_partkey, "part key")?);
        color.push(full_name.split(' ').next().unwrap_or_default().to_string());
        name.push(full_name);
        mfgr.push(m);
        category.push(c);
        brand.push(b);
        kind.push(p.p_type.to_string());
        size.push(p.p_size);
        container.push(p.p_container.to_string());
    }
    batched(part_schema(), key.len(), |r| {
        Ok(vec![
            int_array(&key[r.clone()]),
            string_array(&name[r.clone()]),
            string_array(&mfgr[r.clone()]),
            string_array(&category[r.clone()]),
            string_array(&brand[r.clone()]),
            string_array(&color[r.clone()]),
            string_array(&kind[r.clone()]),
            int_array(&size[r.clone()]),
            string_array(&container[r]),
        ])
    })
}

/// The first and last day of SSB's calendar.
pub(crate) const FIRST_DAY: (i32, u32, u32) = (1992, 1, 1);
pub(crate) const LAST_DAY: (i32, u32, u32) = (1998, 12, 31);

/// SSB's selling season of a month.
fn selling_season(month: u32) -> &'static str {
    match month {
        12 => "Christmas",
        1 | 2 => "Winter",
        3..=5 => "Spring",
        6..=8 => "Summer",
        _ => "Fall",
    }
}

/// Fixed-date US holidays, the ones a calendar table can know without rules.
fn is_holiday(month: u32, day: u32) -> bool {
    matches!(
        (month, day),
        (1, 1) | (7, 4) | (11, 11) | (12, 24) | (12, 25) | (12, 31)
    )
}

fn dwdate() -> Result<Vec<RecordBatch>> {
    let day = |(y, m, d): (i32, u32, u32)| {
        NaiveDate::from_ymd_opt(y, m, d)
            .ok_or_else(|| Error::Internal(format!("bad calendar bound {y}-{m}-{d}")))
    };
    let (first, last) = (day(FIRST_DAY)?, day(LAST_DAY)?);
    let mut ints: [Vec<i32>; 8] = Default::default();
    let mut strings: [Strings; 5] = Default::default();
    let mut flags: [Vec<bool>; 4] = Default::default();
    let mut date = first;
    while date <= last {
        let (y, m, d) = (date.year(), date.month(), date.day());
        let next = date
            .checked_add_days(Days::new(1))
            .ok_or_else(|| Error::Internal(format!("no day after {date}")))?;
        // SSB numbers weekdays from Sunday = 1.
        let weekday = date.weekday().num_days_from_sunday() as i32 + 1;
        let values = [
            y * 10_000 + m as i32 * 100 + d as i32,
            y,
            y * 100 + m as i32,
            weekday,
            d as i32,
            date.ordinal() as i32,
            m as i32,
            (date.ordinal() as i32 - 1) / 7 + 1,
        ];
        for (column, value) in ints.iter_mut().zip(values) {
            column.push(value);
        }
        let texts = [
            date.format("%B %-d, %Y").to_string(),
            date.format("%A").to_string(),
            date.format("%B").to_string(),
            date.format("%b%Y").to_string(),
            selling_season(m).to_string(),
        ];
        for (column, value) in strings.iter_mut().zip(texts) {
            column.push(value);
        }
        let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
        let bits = [
            date.weekday() == Weekday::Sat,
            next.month() != m,
            is_holiday(m, d),
            !weekend,
        ];
        for (column, value) in flags.iter_mut().zip(bits) {
            column.push(value);
        }
        date = next;
    }
    let [
        key,
        year,
        yearmonthnum,
        dayinweek,
        dayinmonth,
        dayinyear,
        monthinyear,
        week,
    ] = &ints;
    let [long, dayofweek, month, yearmonth, season] = &strings;
    let [lastinweek, lastinmonth, holiday, weekday] = &flags;
    batched(dwdate_schema(), key.len(), |r| {
        Ok(vec![
            int_array(&key[r.clone()]),
            string_array(&long[r.clone()]),
            string_array(&dayofweek[r.clone()]),
            string_array(&month[r.clone()]),
            int_array(&year[r.clone()]),
            int_array(&yearmonthnum[r.clone()]),
            string_array(&yearmonth[r.clone()]),
            int_array(&dayinweek[r.clone()]),
            int_array(&dayinmonth[r.clone()]),
            int_array(&dayinyear[r.clone()]),
            int_array(&monthinyear[r.clone()]),
            int_array(&week[r.clone()]),
            string_array(&season[r.clone()]),
            bool_array(&lastinweek[r.clone()]),
            bool_array(&lastinmonth[r.clone()]),
            bool_array(&holiday[r.clone()]),
            bool_array(&weekday[r]),
        ])
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type};

    use super::*;

    fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a dyn Array {
        batch.column_by_name(name).expect(name).as_ref()
    }

    fn ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for b in batches {
            let c = column(b, name);
            match c.data_type() {
                DataType::Int32 => out.extend(
                    c.as_primitive::<Int32Type>()
                        .values()
                        .iter()
                        .map(|v| *v as i64),
                ),
                DataType::Int64 => {
                    out.extend(c.as_primitive::<Int64Type>().values().iter().copied())
                }
                other => panic!("{name} is {other}"),
            }
        }
        out
    }

    fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                column(b, name)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn revenue_is_the_discounted_price() {
        assert_eq!(revenue(10_000, 0), 10_000);
        assert_eq!(revenue(10_000, 10), 9_000);
        assert_eq!(revenue(12_345, 7), 12_345 * 93 / 100);
    }

    #[test]
    fn date_keys_are_yyyymmdd() {
        assert_eq!(
            date_key(TPCHDate::new(tpchgen::dates::MIN_GENERATE_DATE)),
            19920101
        );
        assert_eq!(
            date_key(TPCHDate::new(tpchgen::dates::MIN_GENERATE_DATE + 41)),
            19920211
        );
    }

    #[test]
    fn cities_are_nine_letters_and_a_digit() {
        let c = city("UNITED KINGDOM", 7, CUSTOMER_CITY_SALT);
        assert!(c.starts_with("UNITED KI") && c.len() == 10, "{c}");
        let c = city("CHINA", 7, CUSTOMER_CITY_SALT);
        assert!(c.starts_with("CHINA    ") && c.len() == 10, "{c}");
        let digits: HashSet<String> = (0..1000)
            .map(|k| city("PERU", k, SUPPLIER_CITY_SALT))
            .collect();
        assert_eq!(digits.len(), 10, "every city digit is used");
    }

    #[test]
    fn part_hierarchy_nests() {
        let (m, c, b) = part_hierarchy("Brand#23", 42).unwrap();
        assert_eq!((m.as_str(), c.as_str()), ("MFGR#2", "MFGR#23"));
        assert!(b.starts_with("MFGR#23") && b.len() == 9, "{b}");
        let brands: HashSet<String> = (0..4000)
            .map(|k| part_hierarchy("Brand#11", k).unwrap().2)
            .collect();
        assert_eq!(brands.len(), 40);
        assert!(brands.contains("MFGR#1101") && brands.contains("MFGR#1140"));
        assert!(part_hierarchy("Brand#", 1).is_err());
    }

    #[test]
    fn calendar_covers_seven_years() {
        let d = dwdate().unwrap();
        let keys = ints(&d, "d_datekey");
        assert_eq!(keys.len(), 2557);
        assert_eq!((keys[0], keys[keys.len() - 1]), (19920101, 19981231));
        let yearmonth = strings(&d, "d_yearmonth");
        assert_eq!(yearmonth[0], "Jan1992");
        assert_eq!(strings(&d, "d_date")[0], "January 1, 1992");
        // 1992-01-01 was a Wednesday: Sunday = 1, so 4.
        assert_eq!(ints(&d, "d_daynuminweek")[0], 4);
        assert_eq!(*ints(&d, "d_weeknuminyear").iter().max().unwrap(), 53);
    }

    #[test]
    fn lineorder_follows_the_ssb_rules() {
        let scale = 0.002;
        let tables = generate(scale, 2).unwrap();
        let lo = &tables.lineorder;
        let rows = ints(lo, "lo_orderkey").len();
        assert_eq!(rows, LineItemGenerator::new(scale, 1, 1).iter().count());

        let price = ints(lo, "lo_extendedprice");
        let discount = ints(lo, "lo_discount");
        let rev = ints(lo, "lo_revenue");
        for i in 0..rows {
            assert!((0..=10).contains(&discount[i]));
            assert_eq!(rev[i], price[i] * (100 - discount[i]) / 100);
        }
        let dates = ints(lo, "lo_orderdate");
        assert!(dates.windows(2).all(|w| w[0] <= w[1]), "clustered by date");
        for t in ints(lo, "lo_tax") {
            assert!((0..=8).contains(&t));
        }

        // Every date key is in the calendar; commit dates too.
        let days: HashSet<i64> = ints(&tables.dwdate, "d_datekey").into_iter().collect();
        for name in ["lo_orderdate", "lo_commitdate"] {
            assert!(ints(lo, name).iter().all(|k| days.contains(k)), "{name}");
        }
        // Every dimension key is in its dimension.
        for (fact, table, key) in [
            ("lo_custkey", &tables.customer, "c_custkey"),
            ("lo_partkey", &tables.part, "p_partkey"),
            ("lo_suppkey", &tables.supplier, "s_suppkey"),
        ] {
            let keys: HashSet<i64> = ints(table, key).into_iter().collect();
            assert!(ints(lo, fact).iter().all(|k| keys.contains(k)), "{fact}");
        }

        // The join with orders: same total and date per order, as TPC-H has.
        let orders: HashMap<i64, (i64, i64, String)> = OrderGenerator::new(scale, 1, 1)
            .iter()
            .map(|o| {
                (
                    o.o_orderkey,
                    (
                        o.o_totalprice.into_inner(),
                        date_key(o.o_orderdate) as i64,
                        o.o_orderpriority.to_string(),
                    ),
                )
            })
            .collect();
        let keys = ints(lo, "lo_orderkey");
        let total = ints(lo, "lo_ordtotalprice");
        let date = ints(lo, "lo_orderdate");
        let priority = strings(lo, "lo_orderpriority");
        for i in 0..rows {
            let (t, d, p) = &orders[&keys[i]];
            assert_eq!((total[i], date[i], &priority[i]), (*t, *d, p));
        }

        // Supply cost is partsupp's for that part and supplier (the first
        // such row: with very few suppliers a part can list one twice).
        let costs = SupplyCosts::load(scale).unwrap();
        let mut ps: HashMap<(i64, i64), i64> = HashMap::new();
        for p in PartSuppGenerator::new(scale, 1, 1).iter() {
            ps.entry((p.ps_partkey, p.ps_suppkey))
                .or_insert(p.ps_supplycost.into_inner());
        }
        let (parts, supps, cost) = (
            ints(lo, "lo_partkey"),
            ints(lo, "lo_suppkey"),
            ints(lo, "lo_supplycost"),
        );
        for i in 0..rows {
            assert_eq!(cost[i], ps[&(parts[i], supps[i])]);
            assert_eq!(cost[i], costs.get(parts[i], supps[i]).unwrap());
        }
        assert!(costs.get(1, -5).is_err());
    }

    #[test]
    fn dimensions_carry_ssb_attributes() {
        let tables = generate(0.002, 1).unwrap();
        let regions: HashSet<String> = strings(&tables.customer, "c_region").into_iter().collect();
        assert_eq!(regions.len(), 5);
        assert!(regions.contains("AMERICA"));
        let nations = strings(&tables.supplier, "s_nation");
        let cities = strings(&tables.supplier, "s_city");
        for (n, c) in nations.iter().zip(&cities) {
            assert_eq!(&c[..9], format!("{n:<9.9}"));
        }
        let categories = strings(&tables.part, "p_category");
        let brands = strings(&tables.part, "p_brand1");
        let mfgrs = strings(&tables.part, "p_mfgr");
        for ((m, c), b) in mfgrs.iter().zip(&categories).zip(&brands) {
            assert!(
                c.starts_with(m.as_str()) && b.starts_with(c.as_str()),
                "{m} {c} {b}"
            );
        }
    }
}
