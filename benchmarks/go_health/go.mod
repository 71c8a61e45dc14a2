module fastelect.invalid/gohealth

go 1.19
