<#
.SYNOPSIS
  Install (or remove) dpagent as a Windows service, one per dataplane: dpagent-<Name>.

.DESCRIPTION
  Everything after the named parameters is passed to the service exactly as `dpagent run` flags, e.g.

    .\install.ps1 -Name web-1 -- --cp-address https://cp.example:5678 --ca-cert-file C:\dpagent\ca.pem `
        --dataplane-token-file C:\dpagent\web-1.token --dataplane-file C:\dpagent\dp.yaml -v name=web-1

  The flags are validated by the same parser as `dpagent run` before anything is installed. The service reports
  Running only once Envoy is ready; stopping it drains (readiness 503, /healthcheck/fail, --drain-time), then
  asks Envoy to exit through its admin API. Recovery is set to restart the service after a failure.

  Transparent proxying is NOT available on Windows (no iptables): list the app's upstreams as
  networking.outbound in the Dataplane instead. A Dataplane with networking.transparentProxying is refused.

  Use a system-wide Python (not a virtualenv: pywin32 services do not run from one), with dpagent installed:
    py -3.11 -m pip install dpagent pywin32
#>
[CmdletBinding()]
param(
  [Parameter(Mandatory = $true)][ValidatePattern('^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')][string]$Name,
  [string]$Python = "",
  [ValidateSet("auto", "manual", "disabled")][string]$Startup = "auto",
  [string]$LogDir = "$env:ProgramData\dpagent\logs",
  [switch]$Uninstall,
  [Parameter(ValueFromRemainingArguments = $true)][string[]]$RunArgs
)
$ErrorActionPreference = "Stop"
$Service = "dpagent-$Name"
$ServicePy = Join-Path $PSScriptRoot "service.py"

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
  throw "Run this script from an elevated PowerShell (Administrator): it registers a Windows service."
}
if (-not $Python) {
  $cmd = Get-Command py -ErrorAction SilentlyContinue
  if ($cmd) { $Python = (& py -3 -c "import sys; print(sys.executable)").Trim() }
  else { $Python = (Get-Command python -ErrorAction Stop).Source }
}
if ($Python -match '\\(venv|\.venv|env)\\') {
  Write-Warning "$Python looks like a virtualenv; pywin32 services need a system-wide Python (pywin32 #1450)."
}

if ($Uninstall) {
  if (Get-Service -Name $Service -ErrorAction SilentlyContinue) {
    Stop-Service -Name $Service -ErrorAction SilentlyContinue   # drains first
    & $Python $ServicePy remove --name $Name
    if ($LASTEXITCODE -ne 0) { throw "removing $Service failed" }
  }
  Write-Host "$Service removed"
  exit 0
}

$RunArgs = @($RunArgs | Where-Object { $_ -ne "--" })
if ($RunArgs -contains "--transparent-proxy") {
  throw "Transparent proxying is not available on Windows: remove --transparent-proxy and list the app's upstreams as networking.outbound in the Dataplane."
}
& $Python -c "import win32serviceutil, dpagent" 2>$null
if ($LASTEXITCODE -ne 0) {
  Write-Host "installing dpagent and pywin32 into $Python"
  & $Python -m pip install --quiet dpagent pywin32
  if ($LASTEXITCODE -ne 0) { throw "pip install dpagent pywin32 failed" }
}
# pythonservice.exe must find pywin32's DLLs (pywin32 #1451/#1455); the post-install script puts them in place.
& $Python -m pywin32_postinstall -install -quiet 2>$null | Out-Null

New-Item -ItemType Directory -Force -Path $LogDir | Out-Null
if (Get-Service -Name $Service -ErrorAction SilentlyContinue) {
  Stop-Service -Name $Service
  & $Python $ServicePy remove --name $Name | Out-Null
}
& $Python $ServicePy install --name $Name --startup $Startup --log-dir $LogDir -- @RunArgs
if ($LASTEXITCODE -ne 0) { throw "installing $Service failed (see the message above); nothing was registered" }

# Restart after a failure (the agent exits non-zero when the control plane stays away or Envoy keeps crashing).
& sc.exe failure $Service reset= 86400 actions= restart/5000/restart/10000/restart/30000 | Out-Null
& sc.exe failureflag $Service 1 | Out-Null

if ($Startup -ne "disabled") {
  Write-Host "starting $Service (returns once Envoy is ready)"
  Start-Service -Name $Service
  Write-Host "$Service is running. Log: $LogDir\$Service.log"
}
