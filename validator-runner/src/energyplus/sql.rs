//! Typed metrics from `eplusout.sql`, read from the tabular reports
//! (`TabularDataWithStrings`, the facility-wide rows) and converted to the units the web app
//! reads: energy in kWh, area in m², demand in W, unmet time in hours.

use std::path::Path;

use anyhow::Context;
use runway_contract::NonNegative;
use runway_contract::energyplus::EnergyPlusMetrics;
use sqlx::{ConnectOptions, Row};

/// kWh in one GJ.
const KWH_PER_GJ: f64 = 1e9 / 3.6e6;
const ABUPS: &str = "AnnualBuildingUtilityPerformanceSummary";
const DEMAND: &str = "DemandEndUseComponentsSummary";
const SYSTEM: &str = "SystemSummary";
/// The fuel columns summed into `site_other_fuels_kwh`.
const OTHER_FUELS: &[&str] = &[
    "Gasoline",
    "Diesel",
    "Coal",
    "Fuel Oil No 1",
    "Fuel Oil No 2",
    "Propane",
    "Other Fuel 1",
    "Other Fuel 2",
];
/// The fuel columns of an end use, summed for the end-use metrics.
const ALL_FUELS: &[&str] = &[
    "Electricity",
    "Natural Gas",
    "Gasoline",
    "Diesel",
    "Coal",
    "Fuel Oil No 1",
    "Fuel Oil No 2",
    "Propane",
    "Other Fuel 1",
    "Other Fuel 2",
    "District Cooling",
    "District Heating Water",
    "District Heating Steam",
    // Before 23.1 district heating had one column.
    "District Heating",
];

/// One facility-wide cell of a tabular report.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Report.
    pub report: String,
    /// Table.
    pub table: String,
    /// Row.
    pub row: String,
    /// Column.
    pub column: String,
    /// Units.
    pub units: String,
    /// The value, as written.
    pub value: String,
}

/// Reads the facility-wide cells of the reports the metrics come from.
pub async fn read_cells(path: &Path) -> anyhow::Result<Vec<Cell>> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let rows = sqlx::query(
        "SELECT ReportName, TableName, RowName, ColumnName, Units, Value \
         FROM TabularDataWithStrings \
         WHERE ReportForString = 'Entire Facility' AND ReportName IN (?, ?, ?)",
    )
    .bind(ABUPS)
    .bind(DEMAND)
    .bind(SYSTEM)
    .fetch_all(&mut conn)
    .await
    .with_context(|| format!("cannot read the tabular reports in {}", path.display()))?;
    rows.iter()
        .map(|r| {
            Ok(Cell {
                report: r.try_get(0)?,
                table: r.try_get(1)?,
                row: r.try_get(2)?,
                column: r.try_get(3)?,
                units: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                value: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("unexpected column types in TabularDataWithStrings")
}

struct Cells<'a>(&'a [Cell]);

impl Cells<'_> {
    /// The cell's value converted to the metric's unit, when it is there and numeric.
    fn get(&self, report: &str, table: &str, row: &str, column: &str) -> Option<f64> {
        let cell = self.0.iter().find(|c| {
            c.report == report && c.table == table && c.row == row && c.column == column
        })?;
        let value: f64 = cell.value.trim().parse().ok()?;
        let factor = match cell.units.trim() {
            "GJ" => KWH_PER_GJ,
            "MJ" => KWH_PER_GJ / 1000.0,
            "kWh" | "W" | "m2" | "Hours" | "hr" => 1.0,
            "kW" => 1000.0,
            _ => return None,
        };
        Some(value * factor)
    }

    fn sum(&self, report: &str, table: &str, row: &str, columns: &[&str]) -> Option<f64> {
        let values: Vec<f64> = columns
            .iter()
            .filter_map(|c| self.get(report, table, row, c))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn end_use(&self, row: &str) -> Option<f64> {
        self.sum(ABUPS, "End Uses", row, ALL_FUELS)
    }

    fn fuel(&self, columns: &[&str]) -> Option<f64> {
        self.sum(ABUPS, "End Uses", "Total End Uses", columns)
    }

    fn unmet(&self, abups_row: &str, system_column: &str) -> Option<f64> {
        self.get(
            ABUPS,
            "Comfort and Setpoint Not Met Summary",
            abups_row,
            "Facility",
        )
        .or_else(|| self.get(SYSTEM, "Time Setpoint Not Met", "Facility", system_column))
    }
}

/// The metrics the cells give; a metric whose cell is missing stays `None`.
pub fn metrics(cells: &[Cell]) -> EnergyPlusMetrics {
    let c = Cells(cells);
    let nn = |v: Option<f64>| v.and_then(|v| NonNegative::try_from(v.max(0.0)).ok());
    let conditioned = c.get(
        ABUPS,
        "Building Area",
        "Net Conditioned Building Area",
        "Area",
    );
    let total_area = c.get(ABUPS, "Building Area", "Total Building Area", "Area");
    let site_total = c.get(
        ABUPS,
        "Site and Source Energy",
        "Total Site Energy",
        "Total Energy",
    );
    // Intensity over the conditioned area, or the whole building's when nothing is conditioned.
    let eui_area = conditioned
        .filter(|a| *a > 0.0)
        .or(total_area)
        .filter(|a| *a > 0.0);
    EnergyPlusMetrics {
        site_electricity_kwh: nn(c.fuel(&["Electricity"])),
        site_natural_gas_kwh: nn(c.fuel(&["Natural Gas"])),
        site_district_cooling_kwh: nn(c.fuel(&["District Cooling"])),
        site_district_heating_kwh: nn(c.fuel(&[
            "District Heating Water",
            "District Heating Steam",
            "District Heating",
        ])),
        site_other_fuels_kwh: nn(c.fuel(OTHER_FUELS)),
        site_eui_kwh_m2: nn(site_total.zip(eui_area).map(|(e, a)| e / a)),
        heating_energy_kwh: nn(c.end_use("Heating")),
        cooling_energy_kwh: nn(c.end_use("Cooling")),
        interior_lighting_kwh: nn(c.end_use("Interior Lighting")),
        fans_energy_kwh: nn(c.end_use("Fans")),
        pumps_energy_kwh: nn(c.end_use("Pumps")),
        water_systems_kwh: nn(c.end_use("Water Systems")),
        unmet_heating_hours: nn(c.unmet(
            "Time Setpoint Not Met During Occupied Heating",
            "During Occupied Heating",
        )),
        unmet_cooling_hours: nn(c.unmet(
            "Time Setpoint Not Met During Occupied Cooling",
            "During Occupied Cooling",
        )),
        peak_electric_demand_w: nn(c.get(DEMAND, "End Uses", "Total End Uses", "Electricity")),
        simulated_conditioned_area_m2: nn(conditioned),
        window_heat_gain_kwh: None,
        window_heat_loss_kwh: None,
        window_transmitted_solar_kwh: None,
    }
}

/// Each metric that has a value, as (name, value, unit, category), in the contract's order.
pub fn named(metrics: &EnergyPlusMetrics) -> Vec<(&'static str, f64, &'static str, &'static str)> {
    let m = metrics;
    [
        (
            "site_electricity_kwh",
            m.site_electricity_kwh,
            "kWh",
            "energy",
        ),
        (
            "site_natural_gas_kwh",
            m.site_natural_gas_kwh,
            "kWh",
            "energy",
        ),
        (
            "site_district_cooling_kwh",
            m.site_district_cooling_kwh,
            "kWh",
            "energy",
        ),
        (
            "site_district_heating_kwh",
            m.site_district_heating_kwh,
            "kWh",
            "energy",
        ),
        (
            "site_other_fuels_kwh",
            m.site_other_fuels_kwh,
            "kWh",
            "energy",
        ),
        ("site_eui_kwh_m2", m.site_eui_kwh_m2, "kWh/m2", "energy"),
        (
            "simulated_conditioned_area_m2",
            m.simulated_conditioned_area_m2,
            "m2",
            "building",
        ),
        ("heating_energy_kwh", m.heating_energy_kwh, "kWh", "end_use"),
        ("cooling_energy_kwh", m.cooling_energy_kwh, "kWh", "end_use"),
        (
            "interior_lighting_kwh",
            m.interior_lighting_kwh,
            "kWh",
            "end_use",
        ),
        ("fans_energy_kwh", m.fans_energy_kwh, "kWh", "end_use"),
        ("pumps_energy_kwh", m.pumps_energy_kwh, "kWh", "end_use"),
        ("water_systems_kwh", m.water_systems_kwh, "kWh", "end_use"),
        ("unmet_heating_hours", m.unmet_heating_hours, "h", "comfort"),
        ("unmet_cooling_hours", m.unmet_cooling_hours, "h", "comfort"),
        (
            "peak_electric_demand_w",
            m.peak_electric_demand_w,
            "W",
            "performance",
        ),
    ]
    .into_iter()
    .filter_map(|(name, value, unit, category)| value.map(|v| (name, v.get(), unit, category)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(report: &str, table: &str, row: &str, column: &str, units: &str, value: &str) -> Cell {
        Cell {
            report: report.into(),
            table: table.into(),
            row: row.into(),
            column: column.into(),
            units: units.into(),
            value: value.into(),
        }
    }

    #[test]
    fn gigajoules_become_kilowatt_hours() {
        let cells = vec![
            cell(
                ABUPS,
                "End Uses",
                "Total End Uses",
                "Electricity",
                "GJ",
                "      31.54",
            ),
            cell(
                ABUPS,
                "End Uses",
                "Interior Lighting",
                "Electricity",
                "GJ",
                "31.54",
            ),
            cell(ABUPS, "End Uses", "Heating", "Natural Gas", "GJ", "3.6"),
            cell(ABUPS, "End Uses", "Heating", "Electricity", "GJ", "0.36"),
            cell(
                ABUPS,
                "Building Area",
                "Total Building Area",
                "Area",
                "m2",
                "100.00",
            ),
            cell(
                ABUPS,
                "Building Area",
                "Net Conditioned Building Area",
                "Area",
                "m2",
                "0.00",
            ),
            cell(
                ABUPS,
                "Site and Source Energy",
                "Total Site Energy",
                "Total Energy",
                "GJ",
                "31.54",
            ),
            cell(
                DEMAND,
                "End Uses",
                "Total End Uses",
                "Electricity",
                "W",
                "1000.00",
            ),
            cell(
                SYSTEM,
                "Time Setpoint Not Met",
                "Facility",
                "During Occupied Heating",
                "hr",
                "12.5",
            ),
        ];
        let m = metrics(&cells);
        let get = |v: Option<NonNegative>| v.unwrap().get();
        assert!((get(m.site_electricity_kwh) - 8761.11).abs() < 0.01);
        assert!((get(m.heating_energy_kwh) - 1100.0).abs() < 1e-6);
        assert!((get(m.site_eui_kwh_m2) - 87.6111).abs() < 0.001);
        assert_eq!(get(m.simulated_conditioned_area_m2), 0.0);
        assert_eq!(get(m.peak_electric_demand_w), 1000.0);
        assert_eq!(get(m.unmet_heating_hours), 12.5);
        assert!(m.site_natural_gas_kwh.is_none());
        assert_eq!(named(&m).len(), 7);
    }
}
