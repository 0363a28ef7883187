// Drives `tributary sql serve` with the PostgreSQL JDBC driver (pgjdbc), as
// DBeaver, DataGrip and every JVM tool connect.
//
// Usage: java -cp postgresql.jar JdbcClient.java <port> <password>. Each
// check throws on a wrong answer; the last line printed is "ok <n>".

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Properties;

public class JdbcClient {
    static int checks = 0;

    static void check(String name, Object got, Object want) {
        if (!Objects.equals(got, want)) {
            throw new AssertionError(name + ": got " + got + ", want " + want);
        }
        checks++;
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/lake?sslmode=disable";
        Properties props = new Properties();
        props.setProperty("user", "tributary");
        props.setProperty("password", args[1]);
        try (Connection conn = DriverManager.getConnection(url, props)) {
            // A plain statement, typed getters.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery(
                     "select id, status, total, created_at from silver.orders where id = 1")) {
                check("row", rs.next(), true);
                check("bigint", rs.getLong("id"), 1L);
                check("text", rs.getString("status"), "paid");
                check("numeric", rs.getBigDecimal("total"), new BigDecimal("10.50"));
                check("timestamptz", rs.getTimestamp("created_at").toInstant().toString(),
                      "2024-03-01T10:01:00Z");
                ResultSetMetaData md = rs.getMetaData();
                check("column type", md.getColumnTypeName(1), "int8");
                check("numeric scale", md.getScale(3), 2);
            }

            // A prepared statement run six times: from the fifth run pgjdbc
            // switches to a named server-side statement and binary transfer.
            try (PreparedStatement ps = conn.prepareStatement(
                     "select status, total from orders where id = ?")) {
                List<String> got = new ArrayList<>();
                for (int i = 0; i < 6; i++) {
                    ps.setLong(1, i % 3 + 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        got.add(rs.getString(1) + " " + rs.getBigDecimal(2));
                    }
                }
                check("prepared", String.join(",", got),
                      "paid 10.50,pending 2.00,paid 1.50,paid 10.50,pending 2.00,paid 1.50");
            }

            // Column labels as PostgreSQL names them.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select count(*), 42 from orders")) {
                rs.next();
                check("labels", rs.getMetaData().getColumnLabel(1) + "|" + rs.getMetaData().getColumnLabel(2),
                      "count|?column?");
                check("count", rs.getLong(1), 3L);
            }

            // DatabaseMetaData: what a tool's tree of schemas, tables and columns reads.
            DatabaseMetaData meta = conn.getMetaData();
            check("product", meta.getDatabaseProductName(), "PostgreSQL");
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
            }
            check("schemas", schemas.containsAll(List.of("bronze", "silver", "gold")), true);
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "silver", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check("tables", tables, List.of("orders"));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "silver", "orders", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            check("columns", columns.subList(0, 4),
                  List.of("id:int8", "status:text", "total:numeric", "created_at:timestamptz"));
            // Keys and indexes: a Delta table has none, and the answer says so.
            try (ResultSet rs = meta.getPrimaryKeys(null, "silver", "orders")) {
                check("primary keys", rs.next(), false);
            }
            try (ResultSet rs = meta.getIndexInfo(null, "silver", "orders", false, true)) {
                check("indexes", rs.next(), false);
            }

            // Writes are refused with SQLSTATE 25006; the connection goes on.
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("insert into orders (id) values (9)");
                throw new AssertionError("insert was accepted");
            } catch (SQLException e) {
                check("read only", e.getSQLState(), "25006");
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select count(*) from orders")) {
                rs.next();
                check("after refusal", rs.getLong(1), 3L);
            }
        }

        // A wrong password: SQLSTATE 28P01.
        props.setProperty("password", "wrong");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            throw new AssertionError("wrong password accepted");
        } catch (SQLException e) {
            check("wrong password", e.getSQLState(), "28P01");
        }
        System.out.println("ok " + checks);
    }
}
