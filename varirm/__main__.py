from varirm.cli import main

main()
